"""Reasoning models end to end: the real gateway and workers on the tiny model's reasoning variant.

Its template opens ``<think>`` in the generation prompt (``<think></think>`` when thinking is off)
and re-renders an assistant turn's ``reasoning_content`` between the markers. Output is forced
with ``logit_bias`` (per request on OpenAI; as a model default for the Anthropic API, which has no
such parameter): "think" always writes ``THOUGHT``, "think-call" always writes ``CALL_TEXT`` (a
whole tool call in one token). Seeded sampling with a milder bias gives mixed output whose raw
text (from /v1/completions on the same prompt) must equal reasoning + ``</think>`` + content.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from tokenizers import Tokenizer

from tests.servers import Gateway, serving, sse_events
from tests.tinymodel import CALL_TEXT, THOUGHT, build_tiny_model

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
TOOL = {"name": "get_time", "description": "The time", "input_schema": {"type": "object", "properties": {}}}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-think"), think=True)


@pytest.fixture(scope="module")
def ids(model: Path) -> dict[str, int]:
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    return {t: tok.token_to_id(t) for t in (THOUGHT, CALL_TEXT, "<think>", "</think>")}


@pytest.fixture(scope="module")
def gw(model: Path, ids: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [
        {"name": "think", "path": str(model), "defaults": {"temperature": 0, "logit_bias": {str(ids[THOUGHT]): 100}}},
        {
            "name": "think-call",
            "path": str(model),
            "defaults": {"temperature": 0, "logit_bias": {str(ids[CALL_TEXT]): 100}},
        },
    ]
    with serving(tmp_path_factory.mktemp("gw-think"), models) as g:
        yield g


@pytest.fixture(scope="module")
def client(gw: Gateway) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0, timeout=120)
    try:
        yield c
    finally:
        c.close()


def mixed(ids: dict[str, int], **extra: Any) -> dict[str, Any]:
    """Seeded sampling, the model drawn to THOUGHT and </think>: some reasoning, then content."""
    bias = {str(ids[THOUGHT]): 8, str(ids["</think>"]): 8}
    return {"model": "think", "temperature": 1, "seed": 14, "max_tokens": 24, "logit_bias": bias, **extra}


# -- OpenAI ---------------------------------------------------------------------------------


def test_openai_reasoning_content_is_the_text_before_the_end_marker(
    gw: Gateway, ids: dict[str, int], model: Path
) -> None:
    r = gw.http.post(CHAT, json=mixed(ids, messages=HI))
    assert r.status_code == 200, r.text
    body = r.json()
    message = body["choices"][0]["message"]
    # the same prompt and sampling as raw text: what the model wrote, markers and all
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    prompt = tok.apply_chat_template(HI, add_generation_prompt=True, tokenize=False)
    raw = gw.http.post("/v1/completions", json=mixed(ids, prompt=prompt, logprobs=0)).json()["choices"][0]
    assert raw["text"].count("</think>") >= 1 and message["reasoning_content"] and message["content"]
    assert raw["text"] == message["reasoning_content"] + "</think>" + message["content"]
    assert "<think>" not in message["reasoning_content"] + message["content"]
    reasoning_tokens = raw["logprobs"]["tokens"].index("</think>") + 1
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == reasoning_tokens

    stream = gw.http.post(CHAT, json=mixed(ids, messages=HI, stream=True, stream_options={"include_usage": True}))
    events = sse_events(stream)
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e != "[DONE]" and e["choices"]]
    kinds = [k for d in deltas for k in d if k in ("reasoning_content", "content") and d[k]]
    assert kinds == sorted(kinds, reverse=True)  # every reasoning chunk comes before the content
    assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
    assert "".join(d.get("content") or "" for d in deltas) == message["content"]
    streamed = events[-2]["usage"]
    assert streamed["completion_tokens_details"]["reasoning_tokens"] == reasoning_tokens
    assert streamed["completion_tokens"] == body["usage"]["completion_tokens"]


def test_openai_reasoning_effort_none_turns_thinking_off(gw: Gateway) -> None:
    on = gw.http.post(CHAT, json={"model": "think", "messages": HI, "max_tokens": 3}).json()
    off = gw.http.post(CHAT, json={"model": "think", "messages": HI, "max_tokens": 3, "reasoning_effort": "none"})
    off_body = off.json()
    assert on["choices"][0]["message"] == {"role": "assistant", "content": "", "reasoning_content": THOUGHT * 3}
    assert off_body["choices"][0]["message"] == {"role": "assistant", "content": THOUGHT * 3}
    assert off_body["usage"]["prompt_tokens"] == on["usage"]["prompt_tokens"] + 1  # <think></think>
    assert off_body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    high = gw.http.post(CHAT, json={"model": "think", "messages": HI, "max_tokens": 3, "reasoning_effort": "high"})
    assert high.json()["choices"][0]["message"]["reasoning_content"] == THOUGHT * 3


def test_openai_a_call_inside_the_reasoning_is_not_a_tool_call(gw: Gateway, ids: dict[str, int]) -> None:
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": TOOL["input_schema"]}}]
    body = {"model": "think", "messages": HI, "max_tokens": 2, "tools": tools, "logit_bias": {str(ids[CALL_TEXT]): 100}}
    r = gw.http.post(CHAT, json=body).json()
    choice = r["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "", "reasoning_content": CALL_TEXT * 2}
    assert choice["finish_reason"] == "length"


def test_openai_passed_back_reasoning_keeps_the_cache_warm(gw: Gateway) -> None:
    first = gw.http.post(CHAT, json={"model": "think", "messages": HI, "max_tokens": 6}).json()
    message = first["choices"][0]["message"]
    again = [*HI, message, {"role": "user", "content": "and again?"}]
    second = gw.http.post(CHAT, json={"model": "think", "messages": again, "max_tokens": 2}).json()
    turn1 = first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= turn1 - 1  # the last token never ran


# -- Anthropic ------------------------------------------------------------------------------


def test_anthropic_thinking_block_then_text_with_the_budget(gw: Gateway, client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="think", max_tokens=8, messages=HI, thinking={"type": "enabled", "budget_tokens": 3}
    )
    assert [b.type for b in msg.content] == ["thinking", "text"]
    thinking, text = msg.content
    assert thinking.type == "thinking" and text.type == "text"
    assert thinking.thinking == THOUGHT * 3 and thinking.signature  # the budget forced </think>
    assert text.text == THOUGHT * 4
    assert msg.usage.output_tokens == 8 and msg.stop_reason == "max_tokens"

    with client.messages.stream(
        model="think", max_tokens=8, messages=HI, thinking={"type": "enabled", "budget_tokens": 3}
    ) as stream:
        final = stream.get_final_message()
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in msg.content]


def test_anthropic_stream_events_in_order(gw: Gateway) -> None:
    body = {
        "model": "think",
        "max_tokens": 6,
        "messages": HI,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 2},
    }
    r = gw.http.post("/v1/messages", json=body)
    events = [
        (e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {}).get("type")) for e in sse_events(r)
    ]
    assert events == [
        ("message_start", None, None),
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"),
        *[("content_block_delta", 1, "text_delta")] * 3,
        ("content_block_stop", 1, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]  # fmt: skip


def test_anthropic_thinking_disabled(gw: Gateway, client: anthropic.Anthropic) -> None:
    on = client.messages.create(model="think", max_tokens=3, messages=HI)
    off = client.messages.create(model="think", max_tokens=3, messages=HI, thinking={"type": "disabled"})
    assert [b.type for b in on.content] == ["thinking"]
    assert [b.model_dump() for b in off.content] == [{"type": "text", "text": THOUGHT * 3, "citations": None}]

    def prompt(m: Any) -> int:
        return int(m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0))

    assert prompt(off) == prompt(on) + 1  # <think></think>
    counted = client.messages.count_tokens(model="think", messages=HI, thinking={"type": "disabled"})
    assert counted.input_tokens == prompt(off)  # the switch shapes the prompt that count_tokens counts


def test_anthropic_a_call_inside_the_thinking_is_not_a_tool_use(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="think-call",
        max_tokens=6,
        messages=HI,
        tools=[TOOL],  # type: ignore[list-item]
        thinking={"type": "enabled", "budget_tokens": 1},
    )
    assert [b.type for b in msg.content][:2] == ["thinking", "tool_use"]
    assert msg.content[0].type == "thinking" and msg.content[0].thinking == CALL_TEXT
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert all(u.name == "get_time" and u.input == {} for u in uses) and msg.stop_reason == "max_tokens"


def test_anthropic_thinking_passed_back_keeps_the_cache_warm(client: anthropic.Anthropic) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 3}
    first = client.messages.create(model="think", max_tokens=6, messages=HI, thinking=thinking)
    history: Any = [
        *HI,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": "and again?"},
    ]
    second = client.messages.create(model="think", max_tokens=2, messages=history, thinking=thinking)
    turn1 = first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0) + first.usage.output_tokens
    assert (second.usage.cache_read_input_tokens or 0) >= turn1 - 1
