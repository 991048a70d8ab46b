"""worker.toolcalls: holding a tool call's text back, parsing it with mlx-lm's parsers, and
handing malformed calls back as text. Pure: text in, events out."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.toolcalls import Event, ToolCallStream, ToolSyntax

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Köln"}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'


def json_tools() -> ToolSyntax:
    return ToolSyntax.named("json_tools")


def feed(stream: ToolCallStream, pieces: Iterable[str]) -> list[Event]:
    events: list[Event] = []
    for p in pieces:
        events += stream.push(p)
    return events + stream.finish()


def text_of(events: list[Event]) -> str:
    return "".join(e for e in events if isinstance(e, str))


def calls_of(events: list[Event]) -> list[dict[str, object]]:
    return [e for e in events if isinstance(e, dict)]


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 1000])
def test_a_call_split_anywhere_becomes_one_call_and_no_text(size: int) -> None:
    events = feed(ToolCallStream(json_tools(), TOOLS), chunks(CALL, size))
    assert text_of(events) == ""
    (call,) = calls_of(events)
    assert call["name"] == "get_weather" and call["index"] == 0
    assert json.loads(str(call["arguments"])) == {"city": "Köln"}
    assert str(call["id"]).startswith("call_") and len(str(call["id"])) > 10


def test_call_text_is_held_back_until_the_end_marker() -> None:
    stream = ToolCallStream(json_tools(), TOOLS)
    before = CALL[: CALL.index("</tool")]
    assert stream.push("Let me check. <tool") == ["Let me check. "]  # "<tool" may start a marker
    assert stream.push(before[len("<tool") :]) == []
    assert stream.in_call
    (call,) = stream.push("</tool_call>")
    assert isinstance(call, dict) and call["name"] == "get_weather"


def test_text_before_and_after_a_call_keeps_its_order() -> None:
    events = feed(ToolCallStream(json_tools(), TOOLS), ["Sure.\n", CALL, "\nDone."])
    assert [type(e).__name__ for e in events] == ["str", "dict", "str"]
    assert text_of(events) == "Sure.\n\nDone."


def test_two_calls_get_indexes_0_and_1_and_distinct_ids() -> None:
    events = feed(ToolCallStream(json_tools(), TOOLS), chunks(CALL + "\n" + CALL2, 4))
    calls = calls_of(events)
    assert [c["name"] for c in calls] == ["get_weather", "add"]
    assert [c["index"] for c in calls] == [0, 1]
    assert calls[0]["id"] != calls[1]["id"]
    assert text_of(events) == "\n"


def test_parallel_off_keeps_the_first_call_and_closes() -> None:
    stream = ToolCallStream(json_tools(), TOOLS, parallel=False)
    events = stream.push(CALL + "\n" + CALL2)
    assert [c["name"] for c in calls_of(events)] == ["get_weather"]
    assert stream.closed
    assert stream.push("more") == [] and stream.finish() == []


@pytest.mark.parametrize(
    "body",
    [
        "{not json}",
        '{"name": "rm_rf", "arguments": {}}',  # not an offered function
        '{"arguments": {}}',
        '{"name": "add", "arguments": [1, 2]}',
        '["add"]',
    ],
)
def test_a_malformed_call_comes_back_as_the_text_written(body: str) -> None:
    written = f"<tool_call>\n{body}\n</tool_call>"
    events = feed(ToolCallStream(json_tools(), TOOLS), ["Hi ", *chunks(written, 3), " bye"])
    assert calls_of(events) == []
    assert text_of(events) == f"Hi {written} bye"


def test_an_unterminated_call_is_parsed_at_the_end_or_returned_as_text() -> None:
    whole = '<tool_call>\n{"name": "add", "arguments": {"a": 1}}'
    (call,) = feed(ToolCallStream(json_tools(), TOOLS), [whole])
    assert isinstance(call, dict) and call["name"] == "add"
    cut = '<tool_call>\n{"name": "add", "argu'
    assert feed(ToolCallStream(json_tools(), TOOLS), [cut]) == [cut]


def test_arguments_given_as_a_json_string_are_accepted() -> None:
    body = json.dumps({"name": "add", "arguments": json.dumps({"a": 1})})
    (call,) = feed(ToolCallStream(json_tools(), TOOLS), [f"<tool_call>{body}</tool_call>"])
    assert isinstance(call, dict) and json.loads(call["arguments"]) == {"a": 1}


def test_a_prefilled_call_starts_inside_the_call() -> None:
    syntax = json_tools()
    prefill = syntax.prefill("add")
    assert prefill is not None and prefill.startswith("<tool_call>")
    stream = ToolCallStream(syntax, TOOLS, prefill=prefill)
    assert stream.in_call
    events = feed(stream, chunks('{"a": 5}}\n</tool_call>', 2))
    (call,) = calls_of(events)
    assert call["name"] == "add" and json.loads(str(call["arguments"])) == {"a": 5}
    bad = ToolCallStream(syntax, TOOLS, prefill=prefill)
    assert text_of(feed(bad, ["oops"])) == prefill + "oops"


def test_prefill_is_known_for_every_format_with_a_grammar() -> None:
    """Every mlx-lm format Hearth has a call grammar for (worker/toolformats.py) has a forced
    opening; one it doesn't know (a parser added to mlx-lm later) has none."""
    assert json_tools().prefill(None) == '<tool_call>\n{"name": "'
    assert ToolSyntax.named("qwen3_coder").prefill("f") == "<tool_call>\n<function=f>\n"
    assert ToolSyntax.named("pythonic").prefill("f") == "<|tool_call_start|>[f("
    assert ToolSyntax.named("mistral").prefill("f") == "[TOOL_CALLS]"  # the grammar names the function
    future = ToolSyntax("future_format", "<call>", "</call>", lambda text, tools: None)
    assert future.prefill("f") is None and future.prefill(None) is None


def test_a_syntax_without_end_marker_runs_to_the_end() -> None:
    mistral = ToolSyntax.named("mistral")
    assert mistral.end == ""
    events = feed(ToolCallStream(mistral, TOOLS), ["ok ", '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}]'])
    assert text_of(events) == "ok "
    assert [c["name"] for c in calls_of(events)] == ["add"]


def test_unknown_parser_names_are_refused() -> None:
    with pytest.raises(ValueError, match="no such tool parser"):
        ToolSyntax.named("nope_parser")
    with pytest.raises(ValueError, match="not a parser name"):
        ToolSyntax.named("../x")


@given(st.text(alphabet="ab<>/_toolcal\n{}", max_size=60), st.integers(1, 7))
def test_plain_text_is_never_lost_or_reordered(text: str, size: int) -> None:
    """Whatever the text, with no well-formed call in it every character comes back, in order."""
    events = feed(ToolCallStream(json_tools(), TOOLS), chunks(text, size))
    assert calls_of(events) == []
    assert text_of(events) == text


def test_a_number_json_cannot_carry_makes_the_call_text() -> None:
    """1e400 decodes as inf, and arguments holding it would not be JSON: the call is text."""
    syntax = json_tools()
    stream = ToolCallStream(syntax, TOOLS)
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1e400}}\n</tool_call>'
    events = feed(stream, [text])
    assert not calls_of(events) and text_of(events) == text
