"""The Anthropic Messages API end to end: the official ``anthropic`` SDK and raw HTTP against a real
gateway and real workers on the tiny model (greedy, so every answer reproduces).

One gateway for the module: "tiny" (aliases ``claude-*``) and "tiny-raw" (the same weights,
``strip_billing_header = false``), both greedy by default, behind an API key.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.servers import Gateway, serving

KEY_ENV = "HEARTH_TEST_KEY"
KEY = "sekret-anthropic"
H = {"x-api-key": KEY}
BODY_LIMIT = 1 << 20
CONTEXT = 16384  # the tiny model's
# model defaults (this SDK has no sampling parameters): greedy, and varied text from the random model
GREEDY = {"temperature": 0, "repetition_penalty": 1.5}


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [
        # images = "reject": the image-block case below checks the refusal (the default here is a
        # placeholder note: tests/e2e/test_images.py)
        {"name": "tiny", "path": str(tiny_model), "aliases": ["claude-*"], "defaults": GREEDY, "images": "reject"},
        {"name": "tiny-raw", "path": str(tiny_model), "strip_billing_header": False, "defaults": GREEDY},
    ]
    server = {"api_key_env": KEY_ENV, "body_limit": BODY_LIMIT}
    with serving(tmp_path_factory.mktemp("anthropic"), models, server=server, env={KEY_ENV: KEY}) as g:
        yield g


@pytest.fixture(scope="module")
def client(gw: Gateway) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0, timeout=120)
    try:
        yield c
    finally:
        c.close()


def body(content: str = "Hello", model: str = "tiny", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 16,
        "temperature": 0,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def named_events(r: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """An Anthropic SSE body as (event name, data) pairs; every data's type is its event's name."""
    out: list[tuple[str, dict[str, Any]]] = []
    name = None
    for line in r.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            assert name == data["type"], (name, data)
            out.append((name, data))
            name = None
    return out


EVENT_ORDER = re.compile(
    r"message_start( ping)*( content_block_start( content_block_delta| ping)+ content_block_stop)*"
    r"( ping)* message_delta message_stop"
)


def assert_error(r: httpx.Response, status: int, etype: str, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and set(body) == {"type", "error"}, body
    assert body["error"]["type"] == etype, body
    assert r.headers.get("request-id", "").startswith("req_")
    for w in words:
        assert w in body["error"]["message"], body
    return body


# -- the SDK ---------------------------------------------------------------------------------


def test_sdk_message(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="tiny",
        max_tokens=12,
        system="You are terse.",
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.role == "assistant"
    assert msg.model == "tiny"
    assert msg.stop_reason in ("end_turn", "max_tokens") and msg.stop_sequence is None
    text = "".join(b.text for b in msg.content if b.type == "text")
    assert all(b.type == "text" for b in msg.content)
    assert msg.usage.output_tokens > 0 and (text or msg.stop_reason == "end_turn")
    assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) > 5
    assert msg.usage.cache_creation_input_tokens == 0


def test_sdk_stream_matches_whole(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": "tiny", "max_tokens": 20}
    kwargs["messages"] = [{"role": "user", "content": "Tell me about " + uuid.uuid4().hex}]
    client.messages.create(**kwargs)  # from now on the prompt is cached: greedy output reproduces exactly
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "".join(b.text for b in whole.content if b.type == "text")
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [
        (b.type, getattr(b, "text", None)) for b in whole.content
    ]
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) == whole.usage.input_tokens + (
        whole.usage.cache_read_input_tokens or 0
    )


def test_stream_event_order(gw: Gateway) -> None:
    with gw.http.stream("POST", "/v1/messages?beta=true", json=body(max_tokens=10, stream=True), headers=H) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = named_events(r)
    names = " ".join(n for n, _ in events)
    assert EVENT_ORDER.fullmatch(names), names
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert delta["usage"]["output_tokens"] > 0
    for n, d in events:
        if n == "content_block_start":
            assert d["index"] == 0 and d["content_block"] == {"type": "text", "text": ""}
        if n == "content_block_delta":
            assert d["delta"]["type"] == "text_delta" and d["delta"]["text"]


def test_system_blocks_are_joined_like_a_string(gw: Gateway) -> None:
    blocks = [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}},
    ]
    counts = []
    for system in (blocks, "You are terse.\n\nAnswer in French."):
        r = gw.http.post(
            "/v1/messages/count_tokens",
            json={"model": "tiny", "system": system, "messages": [{"role": "user", "content": "Hi"}]},
            headers=H,
        )
        assert r.status_code == 200, r.text
        counts.append(r.json()["input_tokens"])
    without = gw.http.post(
        "/v1/messages/count_tokens", json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}, headers=H
    )
    assert counts[0] == counts[1] > without.json()["input_tokens"] > 0


def test_count_tokens_equals_usage(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": "tiny", "system": [{"type": "text", "text": "Be brief."}]}
    kwargs["messages"] = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "First " + uuid.uuid4().hex}, {"type": "text", "text": "second"}],
        }
    ]
    counted = client.messages.count_tokens(**kwargs).input_tokens
    msg = client.messages.create(max_tokens=4, **kwargs)
    # a new prompt (only its head may be cached, from other tests): the sum is the count
    assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) == counted
    assert msg.usage.input_tokens > 10
    again = client.messages.create(max_tokens=4, **kwargs)  # the same prompt: cached now
    assert again.usage.cache_read_input_tokens and again.usage.cache_read_input_tokens > 0
    assert again.usage.input_tokens + again.usage.cache_read_input_tokens == counted


def test_max_tokens_stop_reason(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model="tiny", max_tokens=1, messages=[{"role": "user", "content": "Hi"}])
    assert msg.usage.output_tokens == 1
    assert msg.stop_reason in ("max_tokens", "end_turn")  # one token: the limit, unless it was the end
    if msg.content:
        assert msg.stop_reason == "max_tokens"


def test_stop_sequences(client: anthropic.Anthropic, gw: Gateway) -> None:
    kwargs: dict[str, Any] = {"model": "tiny", "max_tokens": 40}
    kwargs["messages"] = [{"role": "user", "content": "Count to ten"}]
    client.messages.create(**kwargs)  # from now on the prompt is cached: greedy output reproduces exactly
    free = "".join(b.text for b in client.messages.create(**kwargs).content if b.type == "text")
    assert len(free) >= 8, free
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    prefix = free[: free.index(stop)]
    msg = client.messages.create(stop_sequences=["never-appears", stop], **kwargs)
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == stop
    assert "".join(b.text for b in msg.content if b.type == "text") == prefix
    with gw.http.stream(
        "POST", "/v1/messages", json={**kwargs, "stop_sequences": [stop], "stream": True}, headers=H
    ) as r:
        events = named_events(r)
    delta = next(d for n, d in events if n == "message_delta")["delta"]
    assert delta == {"stop_reason": "stop_sequence", "stop_sequence": stop}
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == prefix


def test_max_tokens_is_clamped_to_what_the_context_leaves(gw: Gateway) -> None:
    """A prompt that leaves a few tokens of room, and the largest max_tokens there is."""

    def count(text: str) -> int:
        req = {"model": "tiny", "messages": [{"role": "user", "content": text}]}
        r = gw.http.post("/v1/messages/count_tokens", json=req, headers=H)
        return int(r.json()["input_tokens"])

    unit = "The quick brown fox jumps over the lazy dog. "
    base, per = count(""), count(unit * 10) - count("")
    text = unit * ((CONTEXT - 40 - base) * 10 // per)
    while count(text) < CONTEXT - 12:
        text += "dog "
    room = CONTEXT - count(text)
    assert 0 < room <= 40
    r = gw.http.post("/v1/messages", json=body(text, max_tokens=2**31 - 1), headers=H)
    assert r.status_code == 200, r.text
    u = r.json()["usage"]
    assert u["input_tokens"] + u["cache_read_input_tokens"] == CONTEXT - room
    assert 1 <= u["output_tokens"] <= room
    assert r.json()["stop_reason"] in ("max_tokens", "end_turn")


# -- errors ----------------------------------------------------------------------------------

BAD = [
    ("missing-max_tokens", {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ("max_tokens-string", body(max_tokens="5"), "max_tokens"),
    ("max_tokens-zero", body(max_tokens=0), "max_tokens"),
    ("no-messages", {"model": "tiny", "max_tokens": 5, "messages": []}, "messages"),
    ("tool-role", {"model": "tiny", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, "role"),
    (
        "unknown-block",
        {"model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
        "video",
    ),  # fmt: skip
    (
        "image-block",
        {
            "model": "tiny",
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
                    ],
                }
            ],
        },
        "images are not supported by this text-only model",
    ),  # fmt: skip
    (
        "text-block-no-text",
        {"model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
        "text",
    ),  # fmt: skip
    (
        "tool_use-from-user",
        {
            "model": "tiny",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}],
        },
        "assistant",
    ),  # fmt: skip
    ("content-number", {"model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]}, "content"),
    ("temperature-too-high", body(temperature=1.5), "temperature"),
    ("top_p-string", body(top_p="0.5"), "top_p"),
    ("stop_sequences-string", body(stop_sequences="x"), "stop_sequences"),
    ("system-number", body(system=3), "system"),
    ("stream-string", body(stream="yes"), "stream"),
    ("metadata-string", body(metadata="x"), "metadata"),
    ("thinking-list", body(thinking=[1]), "thinking"),
    ("tool-without-schema", body(tools=[{"name": "f"}]), "input_schema"),
    (
        "tool_choice-unknown-tool",
        body(tools=[{"name": "f", "input_schema": {"type": "object"}}], tool_choice={"type": "tool", "name": "g"}),
        "'g'",
    ),  # fmt: skip
    ("body-a-list", [1, 2], "object"),
    ("keep_alive-not-a-duration", body(keep_alive="soon"), "keep_alive"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(gw: Gateway, case: tuple[str, Any, str]) -> None:
    _, data, word = case
    r = gw.http.post("/v1/messages", json=data, headers=H)
    assert_error(r, 400, "invalid_request_error", word)


def test_not_json_and_too_long(gw: Gateway) -> None:
    r = gw.http.post("/v1/messages", content=b"{nope", headers={**H, "content-type": "application/json"})
    assert_error(r, 400, "invalid_request_error", "JSON")
    r = gw.http.post("/v1/messages", content=b"x", headers={**H, "content-type": "text/plain"})
    assert_error(r, 415, "invalid_request_error")
    r = gw.http.post("/v1/messages", json=body("x" * BODY_LIMIT), headers=H)
    assert_error(r, 413, "request_too_large")
    long = "The quick brown fox jumps over the lazy dog. " * 3000  # well over the 16k-token context
    for stream in (False, True):
        r = gw.http.post("/v1/messages", json=body(long, stream=stream), headers=H)
        assert_error(r, 400, "invalid_request_error", "prompt is too long", "context")


def test_unknown_model_and_path(gw: Gateway, client: anthropic.Anthropic) -> None:
    r = gw.http.post("/v1/messages", json=body(model="gpt-nope"), headers=H)
    assert_error(r, 404, "not_found_error", "gpt-nope")
    r = gw.http.post(
        "/v1/messages/count_tokens", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}, headers=H
    )
    assert_error(r, 404, "not_found_error")
    assert_error(gw.http.get("/v1/messages", headers=H), 405, "invalid_request_error")
    assert_error(gw.http.post("/v1/messages/batches", json={}, headers=H), 404, "not_found_error")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    r = gw.http.post(
        "/v1/chat/completions", json={"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]}, headers=H
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"  # OpenAI paths keep theirs


def test_auth(gw: Gateway) -> None:
    for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}):
        assert_error(gw.http.post("/v1/messages", json=body(), headers=headers), 401, "authentication_error", "key")
        assert_error(
            gw.http.post("/v1/messages/count_tokens", json=body(), headers=headers), 401, "authentication_error"
        )
    r = gw.http.post("/v1/chat/completions", json={}, headers={})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    bad = anthropic.Anthropic(base_url=gw.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    bad.close()
    r = gw.http.post("/v1/messages", json=body(max_tokens=2), headers={**H, "anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text  # anthropic-version is accepted, and not required (above)


def test_ignored_fields_claude_code_sends(gw: Gateway) -> None:
    extra = {
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "context_management": {"edits": []},
        "output_config": {"effort": "low"},
        "metadata": {"user_id": "someone"},
        "service_tier": "auto",
        "container": "c1",
        "mcp_servers": [],
        "some_future_field": {"x": 1},
        "top_k": 5,
        "top_p": 0.9,
    }
    r = gw.http.post("/v1/messages?beta=true", json=body(**extra), headers={**H, "anthropic-beta": "x"})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "message"


def test_aliases_on_both_apis(gw: Gateway, client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="claude-hearth-test-1", max_tokens=3, messages=[{"role": "user", "content": "Hi"}]
    )
    assert msg.model == "claude-hearth-test-1" and msg.usage.output_tokens > 0
    oa = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
    chat = oa.chat.completions.create(
        model="claude-hearth-test-2", max_tokens=3, messages=[{"role": "user", "content": "Hi"}]
    )
    assert chat.usage is not None and chat.usage.completion_tokens > 0
    assert sorted(m.id for m in oa.models.list().data) == ["tiny", "tiny-raw"]  # real names only
    oa.close()
    metrics = gw.http.get("/metrics").text  # counted under the real name
    assert 'endpoint="/v1/messages",model="tiny",status="200"' in metrics
    assert 'endpoint="/v1/chat/completions",model="tiny",status="200"' in metrics
    assert 'model="claude' not in metrics


# -- the billing header and the prompt cache --------------------------------------------------

SYSTEM = "You are a coding agent. Follow the rules below with care. " * 30


def billing(n: int) -> dict[str, str]:
    return {
        "type": "text",
        "text": f"x-anthropic-billing-header: cc_version=2.1.{n:03x}; cc_entrypoint=cli; cch={uuid.uuid4().hex[:5]};",
    }


def two_turns(client: anthropic.Anthropic, model: str) -> int:
    """Two turns of one conversation, each with a fresh billing header as Claude Code sends them;
    what the second turn found in the prompt cache."""
    tag = uuid.uuid4().hex
    user1 = {"role": "user", "content": f"Look at file {tag}.py"}
    system: list[Any] = [billing(1), {"type": "text", "text": SYSTEM}]
    first = client.messages.create(model=model, max_tokens=8, system=system, messages=[user1])
    reply = {"role": "assistant", "content": [b.model_dump() for b in first.content] or "ok"}
    user2 = {"role": "user", "content": "Now fix it."}
    system = [billing(2), {"type": "text", "text": SYSTEM}]
    second = client.messages.create(
        model=model,
        max_tokens=8,
        system=system,
        messages=[user1, reply, user2],  # type: ignore[list-item]
    )
    return second.usage.cache_read_input_tokens or 0


def test_billing_header_is_stripped_for_the_prompt_cache(client: anthropic.Anthropic) -> None:
    stripped = two_turns(client, "tiny")
    kept = two_turns(client, "tiny-raw")
    system_tokens = client.messages.count_tokens(
        model="tiny", system=SYSTEM, messages=[{"role": "user", "content": "x"}]
    )
    assert stripped > system_tokens.input_tokens // 2  # the whole system prompt came from the cache
    assert kept < stripped // 4  # only the template's head before the header matched


def test_keep_alive_and_the_access_log(gw: Gateway) -> None:
    """The Ollama-style ``keep_alive`` works on /v1/messages as on the OpenAI endpoints, and the
    request gets its access-log line with the model and its token counts."""
    r = gw.http.post("/v1/messages", json=body(keep_alive="10m"), headers=H)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    admin = {m["name"]: m for m in gw.http.get("/admin/models", headers=H).json()["models"]}
    assert admin["tiny"]["keep_alive_seconds"] == 600
    line = next(x for x in reversed(gw.log().splitlines()) if "hearth.access" in x and "/v1/messages" in x)
    assert "model=tiny" in line and "status=200" in line, line
    assert f"completion_tokens={usage['output_tokens']}" in line, line
    times = dict(f.split("=", 1) for f in line.split() if f.startswith(("ttft=", "worker_ttft=", "admit=")))
    assert 0.0 <= float(times["admit"]) <= float(times["worker_ttft"]) <= float(times["ttft"]), line
    gw.http.post("/v1/messages", json=body(keep_alive=-1), headers=H)  # back to forever for the others
