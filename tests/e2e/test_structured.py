"""Constrained decoding end to end on the real SmolLM2: JSON Schema output, JSON objects, tool
calls in the generic format (its chat template renders no tools), on both APIs.

SmolLM2 would not answer "Tell me a joke" in JSON by itself; the grammar holds every token to
the schema, so the answer validates and ends (``stop``) well inside max_tokens.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from tests.servers import TOOLS, Gateway, chat, serving, sse_events

CHAT = "/v1/chat/completions"
JOKE = {
    "type": "object",
    "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
    "required": ["setup", "punchline"],
    "additionalProperties": False,
}
WEATHER_ARGS = TOOLS[0]["function"]["parameters"]
ANTHROPIC_TOOLS = [
    {"name": t["function"]["name"], "description": t["function"].get("description", ""),
     "input_schema": t["function"]["parameters"]}
    for t in TOOLS
]  # fmt: skip


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("structured")
    with serving(tmp, [{"name": "smol", "path": "default", "max_batch": 8}]) as g:
        yield g


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "joke", "schema": schema, "strict": True}}


def test_json_schema_on_a_prompt_the_model_would_not_answer_in_json(gw: Gateway) -> None:
    body = chat("smol", "Tell me a joke", max_tokens=150, response_format=json_schema_format(JOKE))
    r = gw.http.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    jsonschema.validate(json.loads(choice["message"]["content"]), JOKE)
    assert choice["finish_reason"] == "stop"
    plain = gw.http.post(CHAT, json=chat("smol", "Tell me a joke", max_tokens=30)).json()
    with pytest.raises(ValueError):  # without the grammar it is prose
        json.loads(plain["choices"][0]["message"]["content"])


def test_json_schema_streamed(gw: Gateway) -> None:
    body = chat("smol", "Tell me a joke", max_tokens=150, stream=True, response_format=json_schema_format(JOKE))
    with gw.http.stream("POST", CHAT, json=body) as s:
        assert s.status_code == 200
        events = sse_events(s)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    jsonschema.validate(json.loads(text), JOKE)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_json_object_is_an_object(gw: Gateway) -> None:
    body = chat("smol", "Describe a cat as a JSON object.", max_tokens=150, response_format={"type": "json_object"})
    r = gw.http.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert isinstance(json.loads(choice["message"]["content"]), dict)
    assert choice["finish_reason"] == "stop"


def test_text_completions_take_response_format_too(gw: Gateway) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    body = {"model": "smol", "prompt": "2 + 2 =", "max_tokens": 20, "temperature": 0,
            "response_format": json_schema_format(schema)}  # fmt: skip
    r = gw.http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), schema)


def test_constrained_and_free_requests_share_the_batch(gw: Gateway) -> None:
    """Eight at once, one constrained: each answer is what it is alone (greedy), the JSON one valid."""
    bodies = [chat("smol", f"Name a fruit number {i}.", max_tokens=24) for i in range(7)]
    bodies.append(chat("smol", "Tell me a joke", max_tokens=150, response_format=json_schema_format(JOKE)))

    def ask(b: dict[str, Any]) -> str:
        r = gw.http.post(CHAT, json=b)
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["message"]["content"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, bodies))
    jsonschema.validate(json.loads(together[-1]), JOKE)
    assert together[:7] == [ask(b) for b in bodies[:7]]


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "if"),
        ({"type": "string", "format": "no-such-format"}, "no-such-format"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "/$defs/missing"),
    ],
)
def test_a_schema_that_cannot_be_enforced_is_a_400_naming_the_keyword(
    gw: Gateway, schema: dict[str, Any], keyword: str
) -> None:
    r = gw.http.post(CHAT, json=chat("smol", "x", response_format=json_schema_format(schema)))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "response_format" and keyword in err["message"]
    body = {"model": "smol", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
            "output_config": {"format": {"type": "json_schema", "schema": schema}}}  # fmt: skip
    r = gw.http.post("/v1/messages", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "output_config.format" in r.json()["error"]["message"] and keyword in r.json()["error"]["message"]


def test_a_tool_schema_that_does_not_compile_is_a_400(gw: Gateway) -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/nowhere"}}}
    r = gw.http.post(CHAT, json=chat("smol", "x", tools=[bad]))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tools[0].function.parameters"
    assert "/nowhere" in r.json()["error"]["message"]


def test_anthropic_output_config_json_schema(gw: Gateway) -> None:
    body = {"model": "smol", "max_tokens": 150, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me a joke"}],
            "output_config": {"format": {"type": "json_schema", "schema": JOKE}}}  # fmt: skip
    r = gw.http.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text
    msg = r.json()
    (block,) = msg["content"]
    jsonschema.validate(json.loads(block["text"]), JOKE)
    assert msg["stop_reason"] == "end_turn"


@pytest.mark.parametrize("stream", [False, True])
def test_openai_named_tool_choice_returns_valid_arguments(gw: Gateway, stream: bool) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    body = chat("smol", "What is the weather in Paris?", tools=TOOLS, tool_choice=choice, max_tokens=60, stream=stream)
    if stream:
        with gw.http.stream("POST", CHAT, json=body) as s:
            assert s.status_code == 200
            events = sse_events(s)
        calls = [c for e in events[:-1] for c in e["choices"][0]["delta"].get("tool_calls") or []]
        finish = events[-2]["choices"][0]["finish_reason"]
    else:
        r = gw.http.post(CHAT, json=body)
        assert r.status_code == 200, r.text
        message = r.json()["choices"][0]["message"]
        calls, finish = message["tool_calls"], r.json()["choices"][0]["finish_reason"]
        assert message["content"] is None
    (call,) = calls
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER_ARGS)
    assert finish == "tool_calls"


def test_required_tool_choice_is_a_call_of_an_offered_tool(gw: Gateway) -> None:
    body = chat("smol", "What is the weather in Paris?", tools=TOOLS, tool_choice="required", max_tokens=60)
    r = gw.http.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    (call,) = r.json()["choices"][0]["message"]["tool_calls"]
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == call["function"]["name"])
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)


def test_a_call_cut_off_by_max_tokens_is_reported_not_sent_as_text(gw: Gateway) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    body = chat("smol", "What is the weather in Paris?", tools=TOOLS, tool_choice=choice, max_tokens=5)
    r = gw.http.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["choices"]
    assert out["finish_reason"] == "length"
    assert not out["message"]["content"] and not out["message"].get("tool_calls")
    assert "max_tokens" in out["note"] and "tool call" in out["note"]


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_named_tool_returns_a_valid_tool_use(gw: Gateway, stream: bool) -> None:
    body = {"model": "smol", "max_tokens": 60, "temperature": 0, "stream": stream, "tools": ANTHROPIC_TOOLS,
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}  # fmt: skip
    if stream:
        with gw.http.stream("POST", "/v1/messages", json=body) as s:
            assert s.status_code == 200
            events = [e for e in sse_events(s) if isinstance(e, dict)]
        starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
        (block,) = [b for b in starts if b["type"] == "tool_use"]
        partial = "".join(
            e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"
            and e["delta"]["type"] == "input_json_delta"
        )  # fmt: skip
        tool_input = json.loads(partial)
        reason = next(e["delta"]["stop_reason"] for e in events if e["type"] == "message_delta")
    else:
        r = gw.http.post("/v1/messages", json=body)
        assert r.status_code == 200, r.text
        (block,) = [b for b in r.json()["content"] if b["type"] == "tool_use"]
        tool_input, reason = block["input"], r.json()["stop_reason"]
    assert block["name"] == "get_weather"
    jsonschema.validate(tool_input, WEATHER_ARGS)
    assert reason == "tool_use"


def test_generic_format_round_trips_a_tool_result(gw: Gateway) -> None:
    """The call SmolLM2 made goes back as its JSON, the result as a user turn: the model answers,
    and the result's text really is in the prompt (it costs its tokens)."""
    choice = {"type": "function", "function": {"name": "get_weather"}}
    first = gw.http.post(CHAT, json=chat("smol", "What is the weather in Paris?", tools=TOOLS, tool_choice=choice))
    assert first.status_code == 200, first.text
    (call,) = first.json()["choices"][0]["message"]["tool_calls"]

    def turn(result: str) -> dict[str, Any]:
        history = [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": result},
        ]
        r = gw.http.post(CHAT, json={"model": "smol", "messages": history, "tools": TOOLS, "max_tokens": 40,
                                     "temperature": 0})  # fmt: skip
        assert r.status_code == 200, r.text
        return dict(r.json())

    short, long = turn("sunny"), turn("sunny, 21 degrees Celsius, light wind from the west")
    assert long["usage"]["prompt_tokens"] > short["usage"]["prompt_tokens"] + 8
    assert short["choices"][0]["finish_reason"] in ("stop", "tool_calls", "length")
    assert short["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the earlier turn re-rendered alike

    anthropic = {"model": "smol", "max_tokens": 40, "temperature": 0, "tools": ANTHROPIC_TOOLS, "messages": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": json.loads(call["function"]["arguments"])}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]}  # fmt: skip
    r = gw.http.post("/v1/messages", json=anthropic)
    assert r.status_code == 200, r.text
    assert r.json()["stop_reason"] in ("end_turn", "tool_use", "max_tokens")
