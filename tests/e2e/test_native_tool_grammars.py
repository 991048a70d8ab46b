"""Tool-call grammars for native formats other than json_tools, end to end through the gateway.

The tiny tool model (random weights) is served four times, told to write calls in mlx-lm's
``qwen3_coder`` format (``<function=NAME><parameter=KEY>VALUE</parameter>…``, each value converted
by its schema type), ``glm47``'s (``NAME<arg_key>KEY</arg_key><arg_value>VALUE</arg_value>``),
``pythonic`` (``[NAME(KEY=VALUE)]``) and ``mistral``'s (no end marker: the call runs to the end).
Its output is noise, so whatever call comes back is the grammar's work alone: with tool_choice
``required`` or a named function, every answer must be a call that mlx-lm's parser reads and
whose arguments validate against the schema, on both APIs, streamed and not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.servers import Gateway, serving, sse_events
from tests.tinymodel import build_tiny_model

CHAT = "/v1/chat/completions"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 8},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "detailed": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["rain", "wind"]}, "maxItems": 2},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
FORMATS = ["coder", "glm", "pythonic", "mistral"]  # the served models' names


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    model: Path = build_tiny_model(tmp_path_factory.mktemp("tiny-native-tools"), tools=True)
    models = [
        {"name": "coder", "path": str(model), "tool_parser": "qwen3_coder", "max_batch": 4},
        {"name": "glm", "path": str(model), "tool_parser": "glm47", "max_batch": 4},
        {"name": "pythonic", "path": str(model), "tool_parser": "pythonic", "max_batch": 4},
        {"name": "mistral", "path": str(model), "tool_parser": "mistral", "max_batch": 4},
    ]
    with serving(tmp_path_factory.mktemp("gw-native-tools"), models) as g:
        yield g


def body(model: str, choice: Any, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "What is the weather in Köln?"}],
        "tools": TOOLS,
        "tool_choice": choice,
        "parallel_tool_calls": False,
        "max_tokens": 300,
        "temperature": 0,
        **extra,
    }


def valid(call: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = json.loads(call["arguments"])
    jsonschema.validate(args, SCHEMAS[call["name"]])
    return args


@pytest.mark.parametrize("model", FORMATS)
def test_a_named_function_gives_a_valid_call_of_it(gw: Gateway, model: str) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    r = gw.http.post(CHAT, json=body(model, choice))
    assert r.status_code == 200, r.text
    (out,) = r.json()["choices"]
    assert out["message"]["content"] is None
    (call,) = out["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    args = valid(call["function"])
    assert {"city", "days"} <= set(args)
    assert out["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("model", FORMATS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_streamed_gives_a_valid_call_of_an_offered_function(gw: Gateway, model: str, seed: int) -> None:
    """Sampled (temperature 1, three seeds), so the grammar meets several random paths."""
    data = body(model, "required", stream=True, temperature=1.0, seed=seed)
    with gw.http.stream("POST", CHAT, json=data) as s:
        assert s.status_code == 200
        events = sse_events(s)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e.get("choices")]
    assert "".join(d.get("content") or "" for d in deltas) == ""
    (call,) = [c for d in deltas for c in d.get("tool_calls") or []]
    valid(call["function"])
    assert [e["choices"][0]["finish_reason"] for e in events[:-1] if e.get("choices")][-1] == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_named_tool_gives_a_valid_tool_use(gw: Gateway, stream: bool) -> None:
    tools = [{"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS]
    data = {
        "model": "coder",
        "max_tokens": 300,
        "temperature": 0,
        "stream": stream,
        "tools": tools,
        "tool_choice": {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
        "messages": [{"role": "user", "content": "What time is it?"}],
    }
    if stream:
        with gw.http.stream("POST", "/v1/messages", json=data) as s:
            assert s.status_code == 200
            events = [e for e in sse_events(s) if isinstance(e, dict)]
        (block,) = [e["content_block"] for e in events if e["type"] == "content_block_start"]
        assert block["type"] == "tool_use" and block["name"] == "get_time"
        partial = "".join(e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta")
        args = json.loads(partial)
        stop = next(e["delta"]["stop_reason"] for e in events if e["type"] == "message_delta")
    else:
        r = gw.http.post("/v1/messages", json=data)
        assert r.status_code == 200, r.text
        (block,) = r.json()["content"]
        assert block["type"] == "tool_use" and block["name"] == "get_time"
        args, stop = block["input"], r.json()["stop_reason"]
    jsonschema.validate(args, TIME)
    assert stop == "tool_use"
