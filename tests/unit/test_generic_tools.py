"""The generic tool format's prompt layout (worker.generic_tools: pure, no model)."""

from __future__ import annotations

import json

from tests.servers import TOOLS
from worker.generic_tools import TOOLS_HEADER, call_text, generic_messages, tools_text


def test_the_tools_block_lists_each_tool_on_one_line() -> None:
    block = tools_text(TOOLS)
    assert block.startswith(TOOLS_HEADER)
    lines = [json.loads(line) for line in block.splitlines() if line.startswith('{"name"')]
    assert [t["name"] for t in lines] == ["get_weather", "get_time"]
    assert lines[0]["parameters"] == TOOLS[0]["function"]["parameters"]
    assert '{"tool_call": {"name": "<tool name>"' in block


def test_tools_join_the_system_message_or_open_the_conversation() -> None:
    out = generic_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], TOOLS)
    assert [m["role"] for m in out] == ["system", "user"]
    assert out[0]["content"].startswith("Be brief.\n\n" + TOOLS_HEADER)
    out = generic_messages([{"role": "user", "content": "hi"}], TOOLS)
    assert [m["role"] for m in out] == ["system", "user"] and out[0]["content"].startswith(TOOLS_HEADER)


def test_calls_render_as_the_model_writes_them_and_results_as_one_user_turn() -> None:
    history = [
        {"role": "user", "content": "Weather in Köln and the time?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Köln"}'}},
                {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "12:00"},
        {"role": "user", "content": "Thanks"},
    ]
    out = generic_messages(history, TOOLS)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[2]["content"] == "\n".join([call_text("get_weather", {"city": "Köln"}), call_text("get_time", {})])
    expected = '{"tool_call": {"name": "get_weather", "arguments": {"city": "Köln"}}}'
    assert call_text("get_weather", '{"city": "Köln"}') == expected
    results, thanks = out[3]["content"].split("\n\n")[:2], out[3]["content"].split("\n\n")[2]
    assert [json.loads(r)["tool_result"] for r in results] == [
        {"tool_call_id": "c1", "name": "get_weather", "content": "sunny"},
        {"tool_call_id": "c2", "name": "get_time", "content": "12:00"},
    ]
    assert thanks == "Thanks"


def test_consecutive_user_turns_without_tool_results_stay_apart() -> None:
    out = generic_messages([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], TOOLS)
    assert [m["content"] for m in out[1:]] == ["a", "b"]
