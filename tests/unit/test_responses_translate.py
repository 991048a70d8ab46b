"""Responses requests: validation (a bad body is a 400 naming the parameter), the translation to
the worker's chat input and params, and the bounded store."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.bodies import validate
from gateway.errors import InvalidRequest
from gateway.responses.schemas import ResponsesRequest
from gateway.responses.store import ResponseStore
from gateway.responses.translate import output_messages, prepare, split_name
from shared.config import ModelConfig

CFG = ModelConfig(name="m", path="/nowhere", defaults={"temperature": 0.5, "repetition_penalty": 1.1})
FN = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}


def req(**fields: Any) -> ResponsesRequest:
    return validate(ResponsesRequest, {"model": "m", "input": "hi", **fields})


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    p = prepare(req(instructions="Be brief."), CFG)
    assert p.input == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}


def test_items_become_chat_messages() -> None:
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Rules."}]},
        {"role": "system", "content": "More rules."},
        {"role": "user", "content": [{"type": "input_text", "text": "What "}, {"type": "input_text", "text": "time?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hmm"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "get_time", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "spawn", "namespace": "agents", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "12:00"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "ok"}]},
        {"role": "developer", "content": "Late note."},
    ]
    p = prepare(req(input=items, instructions="Top."), CFG)
    assert p.input["messages"] == [
        {"role": "system", "content": "Top.\n\nRules.\n\nMore rules."},
        {"role": "user", "content": "What time?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "hmm",  # the reasoning item before it
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "agents.spawn", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
        {"role": "tool", "tool_call_id": "c2", "content": "ok"},
        {"role": "system", "content": "Late note."},
    ]
    assert p.conversation == p.input["messages"][1:]


def test_tools_namespaces_flattened_hosted_ones_left_out() -> None:
    tools = [
        {**FN, "strict": True},
        {"type": "namespace", "name": "agents", "description": "d", "tools": [{"type": "function", "name": "spawn"}]},
        {"type": "web_search", "external_web_access": False},
        {"type": "custom", "name": "apply_patch"},
    ]
    p = prepare(req(tools=tools, tool_choice="required", parallel_tool_calls=False), CFG)
    assert p.input["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}, "strict": True},
        },
        {"type": "function", "function": {"name": "agents.spawn", "parameters": {"type": "object", "properties": {}}}},
    ]
    assert p.left_out == ["web_search", "custom:apply_patch"]
    assert p.namespaces == frozenset({"agents"})
    assert p.params["tool_choice"] == "required" and p.params["parallel_tool_calls"] is False
    assert split_name("agents.spawn", p.namespaces) == ("spawn", "agents")
    assert split_name("get_time", p.namespaces) == ("get_time", None)
    only_hosted = prepare(req(tools=[{"type": "web_search"}]), CFG)
    assert "tools" not in only_hosted.input and "tool_choice" not in only_hosted.params


def test_params_defaults_overridden_and_the_extensions() -> None:
    p = prepare(
        req(
            max_output_tokens=7,
            temperature=0,
            top_k=5,
            seed=3,
            include=["message.output_text.logprobs"],
            top_logprobs=2,
            tools=[FN],
            tool_choice={"type": "function", "name": "get_time"},
            reasoning={"effort": "low", "summary": "auto"},
            prompt_cache_key="session-1",
        ),
        CFG,
    ).params
    assert p["max_tokens"] == 7 and p["temperature"] == 0 and p["top_k"] == 5 and p["seed"] == 3
    assert p["repetition_penalty"] == 1.1  # the model's default stays
    assert p["logprobs"] == 2
    assert p["tool_choice"] == {"name": "get_time"}
    assert "reasoning_effort" not in p  # a template switch: it goes with the input
    assert prepare(req(prompt_cache_key="session-1"), CFG).affinity == "session-1"


def test_reasoning_effort_sets_the_template_switches() -> None:
    low = prepare(req(reasoning={"effort": "low"}), CFG).input
    assert low["enable_thinking"] is True and low["reasoning_effort"] == "low"
    off = prepare(req(reasoning={"effort": "none"}), CFG).input
    assert off["enable_thinking"] is False
    assert "enable_thinking" not in prepare(req(reasoning={"summary": "auto"}), CFG).input


def test_json_formats_travel_as_response_format() -> None:
    """In the shape the worker's constrained decoding reads."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"format": {"type": "json_schema", "name": "x", "schema": schema, "strict": True}}
    assert prepare(req(text=fmt), CFG).params["response_format"] == {"type": "json_schema", "schema": schema}
    obj = prepare(req(text={"format": {"type": "json_object"}}), CFG).params["response_format"]
    assert obj == {"type": "json_object"}
    assert "response_format" not in prepare(req(text={"format": {"type": "text"}}), CFG).params


def test_empty_input_is_an_empty_user_turn_and_previous_comes_first() -> None:
    assert prepare(req(input=[]), CFG).input["messages"] == [{"role": "user", "content": ""}]
    previous = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    p = prepare(req(input="c", instructions="S"), CFG, previous)
    assert p.input["messages"] == [{"role": "system", "content": "S"}, *previous, {"role": "user", "content": "c"}]
    assert p.conversation == [*previous, {"role": "user", "content": "c"}]


def test_a_responses_output_is_the_next_prompts_assistant_turn() -> None:
    output = [
        {"id": "rs_1", "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "x"}]},
        {
            "id": "msg_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi", "annotations": [], "logprobs": []}],
        },
        {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "c", "name": "f", "arguments": "{}"},
    ]
    assert output_messages(output) == [
        {
            "role": "assistant",
            "content": "Hi",
            "reasoning_content": "x",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        }
    ]


IMAGE = {"type": "input_image", "image_url": "http://x/y.png"}
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("model-missing", {"model": ...}, "model", "required"),
    ("input-int", {"input": 5}, "input", "string"),
    ("role-wizard", {"input": [{"role": "wizard", "content": "x"}]}, "input[0].role", "user"),
    ("item-type", {"input": [{"type": "web_search_call", "id": "x"}]}, "input[0]", "web_search_call"),
    ("item-untyped", {"input": [{"content": "x"}]}, "input[0]", "needs a type"),
    ("image", {"input": [{"role": "user", "content": [IMAGE]}]}, "input[0].content[0]", "text only"),
    (
        "audio",
        {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        "input[0].content[0]",
        "input_audio",
    ),
    ("call-no-id", {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id", ""),
    ("output-missing", {"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output", ""),
    ("max-output-0", {"max_output_tokens": 0}, "max_output_tokens", "greater than"),
    ("max-tokens", {"max_tokens": 5}, "max_tokens", "max_output_tokens"),
    ("temperature", {"temperature": 3}, "temperature", "less than"),
    ("n", {"n": 2}, "n", "one answer"),
    ("json-schema-missing", {"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format", "schema"),
    ("format-type", {"text": {"format": {"type": "yaml"}}}, "text.format.type", ""),
    ("verbosity", {"text": {"verbosity": "high"}}, "text.verbosity", ""),
    ("effort", {"reasoning": {"effort": "extreme"}}, "reasoning.effort", ""),
    ("tool-name", {"tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name", "pattern"),
    ("tool-dupe", {"tools": [FN, FN]}, "tools", "unique"),
    ("choice-unknown", {"tools": [FN], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "nope"),
    ("choice-required", {"tool_choice": "required"}, "tool_choice", "needs function tools"),
    ("choice-hosted", {"tools": [FN], "tool_choice": {"type": "web_search"}}, "tool_choice", "hosted"),
    ("include", {"include": ["everything"]}, "include", "known"),
    ("truncation", {"truncation": "auto"}, "truncation", "disabled"),
    ("background", {"background": True}, "background", "not supported"),
    ("conversation", {"conversation": "conv_1"}, "conversation", "not supported"),
    ("metadata", {"metadata": {"k": 1}}, "metadata.k", "string"),
    ("store", {"store": "yes"}, "store", "boolean"),
    ("top-logprobs", {"top_logprobs": 21}, "top_logprobs", "less than"),
    ("logit-bias", {"logit_bias": {"x": 1}}, "logit_bias", "token ids"),
]


@pytest.mark.parametrize("name,fields,param,words", BAD, ids=[b[0] for b in BAD])
def test_bad_bodies_name_their_parameter(name: str, fields: dict[str, Any], param: str, words: str) -> None:
    body = {k: v for k, v in {"model": "m", "input": "hi", **fields}.items() if v is not ...}
    with pytest.raises(InvalidRequest) as e:
        validate(ResponsesRequest, body)
    assert e.value.param == param, e.value.message
    assert words.lower() in e.value.message.lower()


def test_images_and_files_become_notes_under_the_placeholder_policy() -> None:
    content = [
        {"type": "input_text", "text": "Look: "},
        IMAGE,
        {"type": "input_file", "filename": "a.pdf", "file_id": "f1"},
    ]
    items = [
        {"role": "user", "content": content},
        {"type": "function_call", "call_id": "c", "name": "view_image", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": [IMAGE]},
    ]
    body = {"model": "m", "input": items}
    r = validate(ResponsesRequest, body, {"images": "placeholder"})
    p = prepare(r, CFG)
    assert p.omitted == 3
    user, _, tool = p.input["messages"]
    assert user["content"].startswith("Look: [image omitted") and "document (a.pdf) omitted" in user["content"]
    assert tool["content"].startswith("[image omitted")
    with pytest.raises(InvalidRequest) as e:
        validate(ResponsesRequest, body, {"images": "reject"})
    assert e.value.param == "input[0].content[1]"


def test_what_codex_sends_validates() -> None:
    """The shape of Codex 0.171's request (../shared/FACTS.md), less its long texts."""
    body = {
        "model": "m",
        "instructions": None,
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "env"}]},
        ],
        "tools": [
            {"type": "function", "name": "exec_command", "description": "run", "strict": False, "parameters": {}},
            {
                "type": "namespace",
                "name": "multi_agent_v1",
                "description": "x",
                "tools": [{"type": "function", "name": "spawn"}],
            },
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199-session",
        "client_metadata": {"x": "y"},
    }
    r = validate(ResponsesRequest, body)
    assert r.stream and not r.store


def test_the_store_is_bounded_in_count_and_bytes_least_recent_first() -> None:
    store = ResponseStore(max_entries=2, max_bytes=10_000)
    for rid in ("a", "b"):
        assert store.put({"id": rid}, [])
    assert store.get("a") is not None  # a is now the most recently used
    store.put({"id": "c"}, [])
    assert store.get("b") is None and store.get("a") is not None and len(store) == 2
    assert store.delete("a") and not store.delete("a")
    small = ResponseStore(max_entries=100, max_bytes=300)
    big = [{"role": "user", "content": "x" * 100}]
    for rid in ("p", "q", "r"):
        small.put({"id": rid}, big)
    assert small.bytes <= 300 and small.get("p") is None and small.get("r") is not None
    assert not small.put({"id": "huge"}, [{"content": "x" * 1000}]) and small.get("huge") is None
    assert not ResponseStore(0, 1000).put({"id": "z"}, [])
