"""The Responses API through the official ``openai`` SDK against a real gateway and real workers:
``responses.create`` and ``responses.stream`` (the event order; the streamed text equals the
non-streamed one, greedy), function calls and their outputs round trip, ``previous_response_id``
continues a stored response and reuses its KV cache, GET/DELETE of stored responses, tools
Hearth can't run left out and said so, a one-token probe, and bad input as 400s naming the
parameter.

SmolLM2 gives real text that ends by itself (``response.completed``); the tiny random models
are quick for the rest, their tool variant writing a well-formed call when a named
``tool_choice`` opens it and one forced token closes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from tokenizers import Tokenizer

from tests.servers import Gateway, serving
from tests.tinymodel import EMPTY_ARGS, THOUGHT, build_tiny_model

pytestmark = pytest.mark.timeout(300)
PATH = "/v1/responses"
GET_TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("resp-tools"), tools=True)


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tool_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gw-responses")
    short = build_tiny_model(tmp / "short", context=1024)
    think = build_tiny_model(tmp / "think", think=True)
    (thought,) = Tokenizer.from_file(str(think / "tokenizer.json")).encode(THOUGHT, add_special_tokens=False).ids
    models = [
        {"name": "tiny", "path": str(tiny_model)},
        {"name": "tools", "path": str(tool_model)},
        {"name": "smol", "path": "default"},
        {"name": "smol-long", "path": "default", "context_length": 32768},  # YaRN, 4x its trained 8192
        {"name": "short", "path": str(short), "images": "reject"},  # trained on 1,024 positions
        {"name": "stretched", "path": str(short), "context_length": 4096},  # the same, RoPE-scaled (YaRN)
        {"name": "think", "path": str(think), "defaults": {"temperature": 0, "logit_bias": {str(thought): 100}}},
    ]
    with serving(tmp, models, server={"responses_store_entries": 3}) as g:
        yield g


@pytest.fixture(scope="module")
def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="anything", max_retries=0)


@pytest.fixture(scope="module")
def empty_args(tool_model: Path) -> int:
    (token,) = Tokenizer.from_file(str(tool_model / "tokenizer.json")).encode(EMPTY_ARGS, add_special_tokens=False).ids
    return token


QUESTION = "What is the capital of France? Answer briefly."
TEXT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_create_and_stream_agree_on_a_real_answer(client: openai.OpenAI) -> None:
    whole = client.responses.create(model="smol", input=QUESTION, temperature=0, max_output_tokens=48, store=False)
    assert whole.status == "completed", whole
    assert "Paris" in whole.output_text
    assert whole.usage is not None and whole.usage.output_tokens > 0 and whole.usage.input_tokens > 10
    assert whole.usage.total_tokens == whole.usage.input_tokens + whole.usage.output_tokens
    with client.responses.stream(
        model="smol", input=QUESTION, temperature=0, max_output_tokens=48, store=False
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]  # runs of deltas as one
    assert collapsed == TEXT_ORDER, kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == whole.output_text
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text
    assert final.id != whole.id and final.id.startswith("resp_")


def test_running_out_of_output_tokens_is_incomplete(client: openai.OpenAI, gw: Gateway) -> None:
    r = client.responses.create(model="tiny", input="Hello", max_output_tokens=3, temperature=0)
    assert r.status == "incomplete"
    assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 3
    with gw.http.stream(
        "POST", PATH, json={"model": "tiny", "input": "Hello", "max_output_tokens": 3, "stream": True}
    ) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        names = [line[7:] for line in s.iter_lines() if line.startswith("event: ")]
    assert names[-1] == "response.incomplete"


@pytest.mark.parametrize("max_output_tokens", [1, 16])
def test_a_probe_with_an_empty_input_answers(gw: Gateway, max_output_tokens: int) -> None:
    r = gw.http.post(PATH, json={"model": "tiny", "input": [], "max_output_tokens": max_output_tokens})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "response" and body["status"] in ("completed", "incomplete")
    assert body["usage"]["output_tokens"] <= max_output_tokens
    assert body["output"][0]["type"] == "message"


def call_request(empty_args: int, **extra: Any) -> dict[str, Any]:
    """A named tool_choice opens the call; the forced token closes its (empty) arguments."""
    return {
        "model": "tools",
        "input": "What time is it?",
        "tools": [GET_TIME, WEATHER],
        "tool_choice": {"type": "function", "name": "get_time"},
        "extra_body": {"logit_bias": {str(empty_args): 100}},  # a Hearth extension
        "max_output_tokens": 1,
        "temperature": 0,
        **extra,
    }


def test_a_function_call_and_its_output_round_trip(client: openai.OpenAI, empty_args: int) -> None:
    first = client.responses.create(**call_request(empty_args))
    (call,) = first.output
    assert call.type == "function_call"
    assert call.name == "get_time" and call.arguments == "{}" and call.call_id.startswith("call_")
    assert call.id is not None and call.id.startswith("fc_")
    follow = {k: v for k, v in call_request(empty_args).items() if k not in ("tool_choice", "extra_body")}
    follow["input"] = [
        {"role": "user", "content": "What time is it?"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "It is 12:00."},
    ]
    second = client.responses.create(**follow)
    assert second.status in ("completed", "incomplete")
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + 5  # the call and its output are in the prompt


def test_a_streamed_function_call(client: openai.OpenAI, empty_args: int) -> None:
    with client.responses.stream(**call_request(empty_args)) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.incomplete",  # max_output_tokens 1 ended it, right after the call was complete
    ]
    done = events[4]
    assert done.type == "response.function_call_arguments.done" and done.arguments == "{}"
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output[0].type == "function_call" and final.output[0].name == "get_time"


def test_previous_response_id_continues_and_reuses_the_cache(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="tiny", instructions="You are terse.", input="Tell me a story.", max_output_tokens=6, temperature=0
    )
    second = client.responses.create(
        model="tiny",
        instructions="You are terse.",
        input="Another one.",
        previous_response_id=first.id,
        max_output_tokens=6,
        temperature=0,
    )
    assert first.usage is not None and second.usage is not None
    assert second.previous_response_id == first.id
    # the prompt is the first turn (its answer included) plus the new input
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens  # the first turn was cached
    assert client.responses.retrieve(first.id).output_text == first.output_text
    deleted = client.responses.delete(first.id)
    assert deleted is None  # the SDK returns nothing for a deletion; the body was checked in the next test
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tiny", input="x", previous_response_id=first.id, max_output_tokens=1)
    assert e.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_store_get_delete_and_eviction(gw: Gateway) -> None:
    unstored = gw.http.post(PATH, json={"model": "tiny", "input": "x", "max_output_tokens": 1, "store": False})
    assert gw.http.get(f"{PATH}/{unstored.json()['id']}").status_code == 404
    ids = []
    for _ in range(4):  # the store holds 3 (responses_store_entries)
        ids.append(gw.http.post(PATH, json={"model": "tiny", "input": "x", "max_output_tokens": 1}).json()["id"])
    gone = gw.http.get(f"{PATH}/{ids[0]}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "response_not_found"
    kept = gw.http.get(f"{PATH}/{ids[-1]}")
    assert kept.status_code == 200 and kept.json()["id"] == ids[-1] and kept.json()["status"] == "incomplete"
    deleted = gw.http.delete(f"{PATH}/{ids[-1]}")
    assert deleted.json() == {"id": ids[-1], "object": "response.deleted", "deleted": True}
    assert gw.http.delete(f"{PATH}/{ids[-1]}").status_code == 404
    metrics = gw.http.get("/metrics").text
    assert 'endpoint="/v1/responses/{id}"' in metrics and ids[0] not in metrics


def test_hosted_tools_are_left_out_and_said_so(gw: Gateway) -> None:
    tools = [
        {"type": "web_search", "external_web_access": False},
        {"type": "namespace", "name": "agents", "description": "d", "tools": [GET_TIME]},
        GET_TIME,
    ]
    r = gw.http.post(PATH, json={"model": "tools", "input": "hi", "tools": tools, "max_output_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.headers["x-hearth-tools-left-out"] == "web_search"
    assert r.json()["tools"] == tools  # echoed as sent
    assert "tools left out of the prompt (Hearth can't run them): web_search" in gw.log()


IMAGE = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
BAD: list[tuple[dict[str, Any], int, str | None]] = [
    ({"model": "tiny", "input": 5}, 400, "input"),
    ({"model": "tiny", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400, "input[0].content[0]"),
    ({"model": "short", "input": [{"role": "user", "content": [IMAGE]}]}, 400, "input[0].content[0]"),  # "reject"
    ({"model": "tiny", "input": "x", "text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text.format"),
    ({"model": "tiny", "input": "x", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"model": "tiny", "input": "x", "tool_choice": "required"}, 400, "tool_choice"),
    ({"model": "tiny", "input": "x", "truncation": "auto"}, 400, "truncation"),
    ({"model": "nope", "input": "x"}, 404, "model"),
    ({"model": "tiny", "input": "x", "previous_response_id": "resp_unknown"}, 400, "previous_response_id"),
    ({"model": "tiny", "input": "word " * 20000}, 400, "input"),  # longer than the context
]


@pytest.mark.parametrize("body,status,param", BAD)
def test_bad_input_is_an_openai_error_naming_the_parameter(
    gw: Gateway, body: dict[str, Any], status: int, param: str | None
) -> None:
    for stream in (False, True):
        r = gw.http.post(PATH, json={**body, "stream": stream, "max_output_tokens": body.get("max_output_tokens", 2)})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"


def test_bad_json_and_wrong_methods(gw: Gateway) -> None:
    r = gw.http.post(PATH, content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert gw.http.get(PATH).status_code == 405
    assert gw.http.post(f"{PATH}/resp_x").status_code == 405


def test_errors_reach_the_sdk_as_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="tiny", input="x", max_output_tokens=0)


def test_a_model_runs_beyond_its_trained_context_when_configured(gw: Gateway) -> None:
    models = {m["id"]: m for m in gw.http.get("/v1/models").json()["data"]}
    assert models["short"]["context_length"] == 1024 and models["short"]["trained_context_length"] is None
    assert models["stretched"]["context_length"] == 4096 and models["stretched"]["trained_context_length"] == 1024
    (worker,) = models["stretched"]["workers"]
    assert worker["context_length"] == 4096 and worker["trained_context_length"] == 1024
    long_input = "The quick brown fox jumps over the lazy dog. " * 200  # ~2,000 tokens
    refused = gw.http.post(PATH, json={"model": "short", "input": long_input, "max_output_tokens": 4})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    assert refused.json()["error"]["param"] == "input"
    answered = gw.http.post(PATH, json={"model": "stretched", "input": long_input, "max_output_tokens": 4})
    assert answered.status_code == 200, answered.text
    assert 1024 < answered.json()["usage"]["input_tokens"] < 4096
    assert (
        "stretched: context 4096 tokens, beyond its trained 1024 (rope_scaling yarn, factor 4)"
        in gw.log_path.read_text()
    )


def test_an_image_is_a_note_by_default(gw: Gateway) -> None:
    """Codex resends a ``view_image`` result every turn: a text-only model gets a note in its
    place (the images policy's ``placeholder``, the default here), and the response says so."""
    content = [{"type": "input_text", "text": "What is this?"}, IMAGE]
    r = gw.http.post(
        PATH, json={"model": "tiny", "input": [{"role": "user", "content": content}], "max_output_tokens": 2}
    )
    assert r.status_code == 200, r.text
    assert "1 image/document block replaced by a text note" in r.headers["hearth-warning"]
    plain = gw.http.post(PATH, json={"model": "tiny", "input": "What is this?", "max_output_tokens": 2})
    assert r.json()["usage"]["input_tokens"] > plain.json()["usage"]["input_tokens"] + 5  # the note is in the prompt


def test_reasoning_comes_back_as_a_reasoning_item(gw: Gateway) -> None:
    body = {"model": "think", "input": "Hi", "max_output_tokens": 3}
    r = gw.http.post(PATH, json=body).json()
    reasoning = r["output"][0]
    assert reasoning["type"] == "reasoning" and reasoning["content"] == [
        {"type": "reasoning_text", "text": THOUGHT * 3}
    ]
    assert r["usage"]["output_tokens_details"]["reasoning_tokens"] == 3
    off = gw.http.post(PATH, json={**body, "reasoning": {"effort": "none"}}).json()
    assert [item["type"] for item in off["output"]] == ["message"]  # the template's switch turned thinking off
    assert off["output"][0]["content"][0]["text"] == THOUGHT * 3
    assert off["usage"]["output_tokens_details"]["reasoning_tokens"] == 0
    with gw.http.stream("POST", PATH, json={**body, "stream": True}) as s:
        names = [line[7:] for line in s.iter_lines() if line.startswith("event: ")]
    reasoning_events = [
        "response.output_item.added",
        "response.content_part.added",
        *["response.reasoning_text.delta"] * names.count("response.reasoning_text.delta"),
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert names[2 : 2 + len(reasoning_events)] == reasoning_events, names
    assert names[-1] == "response.incomplete"
    # the reasoning goes back with the next turn (previous_response_id), so the cache stays warm
    follow = gw.http.post(PATH, json={**body, "input": "And?", "previous_response_id": r["id"], "max_output_tokens": 1})
    turn1 = r["usage"]["input_tokens"] + r["usage"]["output_tokens"]
    assert follow.json()["usage"]["input_tokens_details"]["cached_tokens"] >= turn1 - 1


def test_the_default_scaling_keeps_a_short_answer(client: openai.OpenAI) -> None:
    """YaRN (without its attention temperature) leaves short-range positions as trained: SmolLM2
    at four times its trained context still answers a short question as it does unscaled."""
    kw: dict[str, Any] = {"input": QUESTION, "temperature": 0, "max_output_tokens": 24, "store": False}
    plain = client.responses.create(model="smol", **kw)
    stretched = client.responses.create(model="smol-long", **kw)
    assert "Paris" in plain.output_text and "Paris" in stretched.output_text, (plain.output_text, stretched.output_text)


def test_text_format_json_schema_holds_the_output_to_the_schema(client: openai.OpenAI) -> None:
    """Constrained decoding: a prompt SmolLM2 would not answer in JSON still comes back as JSON
    that validates against the schema."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    fmt: Any = {"format": {"type": "json_schema", "name": "weather", "schema": schema, "strict": True}}
    r = client.responses.create(
        model="smol", input="Tell me a joke.", text=fmt, temperature=0, max_output_tokens=64, store=False
    )
    assert r.status == "completed", r
    value = json.loads(r.output_text)
    assert set(value) == {"city", "sunny"} and isinstance(value["city"], str) and isinstance(value["sunny"], bool)
