"""gateway.anthropic.translate: Anthropic requests to Hearth's wire input and params, and
``delta``/``done`` back to content blocks, stream events, stop reasons and usage (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.anthropic.schemas import MessagesRequest
from gateway.anthropic.translate import Blocks, MessageShape, params_for, prompt_input, stop_reason, usage
from gateway.bodies import validate
from gateway.errors import WorkerFailed
from shared.config import ModelConfig
from shared.protocol import Done

CFG = ModelConfig(name="m", path="/m", defaults={"repetition_penalty": 1.1, "temperature": 0.7})
BILLING = {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.1c0; cch=9f3a1;"}


def req(**fields: Any) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **fields}
    return validate(MessagesRequest, body)


def test_system_string_and_blocks() -> None:
    assert prompt_input(req(system="Be brief."), CFG)["messages"][0] == {"role": "system", "content": "Be brief."}
    blocks = [BILLING, {"type": "text", "text": "A"}, {"type": "text", "text": "B"}]
    assert prompt_input(req(system=blocks), CFG)["messages"][0] == {"role": "system", "content": "A\n\nB"}
    kept = ModelConfig(name="m", path="/m", strip_billing_header=False)
    assert prompt_input(req(system=blocks), kept)["messages"][0]["content"] == BILLING["text"] + "\n\nA\n\nB"
    assert prompt_input(req(), CFG)["messages"] == [{"role": "user", "content": "hi"}]  # no system: none
    only_billing = prompt_input(req(system=[BILLING]), CFG)["messages"]
    assert only_billing == [{"role": "user", "content": "hi"}]


def test_billing_header_stripping_makes_two_requests_share_their_prefix() -> None:
    other = {**BILLING, "text": BILLING["text"].replace("9f3a1", "0b2c4")}
    a = prompt_input(req(system=[BILLING, {"type": "text", "text": "S"}]), CFG)
    b = prompt_input(req(system=[other, {"type": "text", "text": "S"}]), CFG)
    assert a == b


def test_text_blocks_joined_and_thinking_passed_back_as_reasoning_content() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {
            "role": "assistant",
            "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "text", "text": "ok"}],
        },  # fmt: skip
        {"role": "system", "content": "mid-conversation note"},
        {"role": "user", "content": "three"},
    ]
    assert prompt_input(req(messages=messages), CFG)["messages"] == [
        {"role": "user", "content": "one\n\ntwo"},
        {"role": "assistant", "content": "ok", "reasoning_content": "hm"},  # the template re-renders it
        {"role": "system", "content": "mid-conversation note"},
        {"role": "user", "content": "three"},
    ]


def test_tool_use_and_tool_result_become_tool_calls_and_tool_messages() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris", "n": [1, 2]}},
                {"type": "tool_use", "id": "toolu_2", "name": "t", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "no"}, {"type": "text", "text": "such"}],
                    "is_error": True,
                },  # fmt: skip
                {"type": "text", "text": "thanks"},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3"}]},
    ]
    out = prompt_input(req(messages=messages), CFG)["messages"]
    assert out[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": '{"city":"Paris","n":[1,2]}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "t", "arguments": "{}"}},
        ],
    }
    assert json.loads(out[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris", "n": [1, 2]}
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no\n\nsuch"},
        {"role": "user", "content": "thanks"},
        {"role": "tool", "tool_call_id": "toolu_3", "content": ""},
    ]


def test_tools_and_tool_choice() -> None:
    tools = [
        {"name": "w", "description": "weather", "input_schema": {"type": "object", "properties": {}}},
        {"name": "t", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}},
    ]
    r = req(tools=tools, tool_choice={"type": "tool", "name": "t"})
    assert prompt_input(r, CFG)["tools"] == [
        {
            "type": "function",
            "function": {"name": "w", "description": "weather", "parameters": tools[0]["input_schema"]},
        },
        {"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}},
    ]
    assert params_for(r, CFG)["tool_choice"] == {"name": "t"}
    for given, wire in (("auto", "auto"), ("any", "required"), ("none", "none")):
        assert params_for(req(tools=tools, tool_choice={"type": given}), CFG)["tool_choice"] == wire
    assert "tool_choice" not in params_for(req(tools=tools), CFG)
    assert "tool_choice" not in params_for(req(tool_choice={"type": "any"}), CFG)  # no tools: nothing to choose
    assert "tools" not in prompt_input(req(), CFG)


def test_params_defaults_overridden_by_the_request() -> None:
    assert params_for(req(), CFG) == {"repetition_penalty": 1.1, "temperature": 0.7, "max_tokens": 64}
    r = req(temperature=0, top_p=0.5, top_k=3, stop_sequences=["\n\nHuman:"], metadata={"user_id": "u"})
    assert params_for(r, CFG) == {
        "repetition_penalty": 1.1,
        "temperature": 0,
        "top_p": 0.5,
        "top_k": 3,
        "max_tokens": 64,
        "stop": ["\n\nHuman:"],
    }


@pytest.mark.parametrize(
    ("done", "expected"),
    [
        (Done("i", "stop"), ("end_turn", None)),
        (Done("i", "stop", stop="###"), ("stop_sequence", "###")),
        (Done("i", "length", stop=None), ("max_tokens", None)),
        (Done("i", "tool_calls"), ("tool_use", None)),
        (Done("i", "loop"), ("end_turn", None)),
    ],
)
def test_stop_reason(done: Done, expected: tuple[str, str | None]) -> None:
    assert stop_reason(done) == expected


def test_usage_splits_cached_from_fresh_prompt_tokens() -> None:
    done = Done("i", "stop", {"prompt_tokens": 100, "completion_tokens": 7, "cached_tokens": 60})
    assert usage(done) == {
        "input_tokens": 40,
        "output_tokens": 7,
        "cache_read_input_tokens": 60,
        "cache_creation_input_tokens": 0,
    }


def test_blocks_and_their_events_agree() -> None:
    b = Blocks()
    events = [*b.text("Hel"), *b.text(""), *b.text("lo")]
    events += b.tool_calls([{"index": 0, "id": "call_1", "name": "w", "arguments": '{"a": 1}'}])
    events += b.tool_calls([{"index": 1, "id": "toolu_2", "name": "t", "arguments": ""}])
    events += [*b.text("after"), *b.finish()]
    assert b.content == [
        {"type": "text", "text": "Hello"},
        {"type": "tool_use", "id": "toolu_call_1", "name": "w", "input": {"a": 1}},
        {"type": "tool_use", "id": "toolu_2", "name": "t", "input": {}},
        {"type": "text", "text": "after"},
    ]
    assert [(n, d.get("index")) for n, d in events] == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("content_block_start", 3),
        ("content_block_delta", 3),
        ("content_block_stop", 3),
    ]
    assert all(n == d["type"] for n, d in events)
    assert events[4][1]["content_block"] == {"type": "tool_use", "id": "toolu_call_1", "name": "w", "input": {}}
    assert events[5][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"a":1}'}


def test_tool_arguments_that_are_not_an_object_are_a_worker_failure() -> None:
    for bad in ("[1]", "{nope", '"x"'):
        with pytest.raises(WorkerFailed):
            Blocks().tool_calls([{"id": "c", "name": "w", "arguments": bad}])


def test_message_shape() -> None:
    shape = MessageShape("abc", "claude-x")
    done = Done("abc", "stop", {"prompt_tokens": 5, "completion_tokens": 2, "cached_tokens": 0}, stop="END")
    msg = shape.message([{"type": "text", "text": "hi"}], done)
    assert msg == {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
        "usage": {
            "input_tokens": 5,
            "output_tokens": 2,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }
    name, start = shape.start()
    assert name == "message_start" and start["message"]["content"] == [] and start["message"]["stop_reason"] is None
    assert [n for n, _ in shape.end(done)] == ["message_delta", "message_stop"]
    assert shape.end(done)[0][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
