"""Reasoning in the engine core, in-process, on the tiny model's reasoning variant: its template
opens ``<think>`` in the generation prompt (``<think></think>`` with ``enable_thinking`` false),
and ``logit_bias`` forces its output (``THOUGHT``, or ``CALL_TEXT``: a whole tool call in one
token). The checks: reasoning and content apart in the deltas, the budget's forced end marker,
stop strings and tool-call parsing blind to the reasoning, and ``reasoning_tokens``."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import ModelConfig
from shared.protocol import Delta, Done, Generate
from tests.tinymodel import CALL_TEXT, THOUGHT, build_tiny_model

HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from worker.core import EngineCore
    from worker.model import load_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny-think-core"), think=True)
    cfg = ModelConfig(name="t", path=str(path))
    return EngineCore(load_model(cfg), cfg)


def token(core: Any, text: str) -> str:
    return str(core.m.tokenizer.convert_tokens_to_ids(text))


def run(core: Any, params: dict[str, Any], **inp: Any) -> tuple[list[Delta], Done]:
    """``params``, and ``inp`` added to the input (tools, the template switches)."""
    req = Generate(id="r", model="t", input={"messages": HI, **inp}, params={"temperature": 0, **params})
    events = core.add(req)
    while core.has_work:
        events += core.step()
    *deltas, done = events
    assert all(isinstance(d, Delta) for d in deltas) and isinstance(done, Done)
    return deltas, done


def parts(deltas: list[Delta]) -> tuple[str, str]:
    return "".join(d.reasoning for d in deltas), "".join(d.text for d in deltas)


def test_reasoning_and_content_come_apart_and_the_budget_forces_the_end(core: Any) -> None:
    deltas, done = run(core, {"max_tokens": 8, "logit_bias": {token(core, THOUGHT): 100}, "thinking_budget": 3})
    assert parts(deltas) == (THOUGHT * 3, THOUGHT * 4)  # 3 thoughts, the forced </think>, 4 of content
    assert not any(d.reasoning and d.text for d in deltas)  # here every token is one or the other
    assert all("think" not in d.reasoning + d.text for d in deltas)  # the markers are left out
    assert done.finish_reason == "length"
    assert done.usage["completion_tokens"] == 8 and done.usage["reasoning_tokens"] == 4  # with </think>


def test_without_a_budget_the_reasoning_runs_on(core: Any) -> None:
    deltas, done = run(core, {"max_tokens": 5, "logit_bias": {token(core, THOUGHT): 100}})
    assert parts(deltas) == (THOUGHT * 5, "")
    assert done.usage["reasoning_tokens"] == 5


def test_thinking_disabled_uses_the_template_switch_and_allows_no_reasoning(core: Any) -> None:
    bias = {token(core, THOUGHT): 100}
    on_deltas, on = run(core, {"max_tokens": 3, "logit_bias": bias}, enable_thinking=True)
    off_deltas, off = run(core, {"max_tokens": 3, "logit_bias": bias}, enable_thinking=False)
    assert off.usage["prompt_tokens"] == on.usage["prompt_tokens"] + 1  # "<think></think>" vs "<think>"
    assert parts(on_deltas) == (THOUGHT * 3, "")
    assert parts(off_deltas) == ("", THOUGHT * 3) and off.usage["reasoning_tokens"] == 0
    # forced to open a reasoning block anyway, a model with thinking off has it closed at once
    think = token(core, "<think>")
    deltas, done = run(core, {"max_tokens": 4, "logit_bias": {think: 100}}, enable_thinking=False)
    assert core.count_tokens({"messages": HI, "enable_thinking": False}) == off.usage["prompt_tokens"]
    assert parts(deltas)[0] == "" and done.usage["reasoning_tokens"] == 4  # <think></think> twice


def test_stop_strings_ignore_the_reasoning(core: Any) -> None:
    deltas, done = run(
        core, {"max_tokens": 9, "logit_bias": {token(core, THOUGHT): 100}, "thinking_budget": 2, "stop": [THOUGHT]}
    )
    assert parts(deltas) == (THOUGHT * 2, "")
    assert done.finish_reason == "stop" and done.stop == THOUGHT
    assert done.usage["completion_tokens"] == 4  # 2 thoughts, </think>, and the stop string's token


def test_a_tool_call_written_inside_the_reasoning_is_not_parsed(core: Any) -> None:
    params = {"max_tokens": 6, "logit_bias": {token(core, CALL_TEXT): 100}, "thinking_budget": 1}
    deltas, done = run(core, {**params, "parallel_tool_calls": False}, tools=TOOLS)
    reasoning, text = parts(deltas)
    assert reasoning == CALL_TEXT and text == ""  # the one in the reasoning is text of the reasoning
    calls = [c for d in deltas for c in d.tool_calls or []]
    assert [(c["name"], c["arguments"]) for c in calls] == [("get_time", "{}")]  # the one after it is a call
    assert done.finish_reason == "tool_calls" and done.usage["completion_tokens"] == 3


def test_text_completions_are_never_split(core: Any) -> None:
    req = Generate(
        id="p",
        model="t",
        input={"prompt": "<think>"},
        params={"temperature": 0, "max_tokens": 2, "logit_bias": {token(core, "</think>"): 100}},
    )
    events = core.add(req)
    while core.has_work:
        events += core.step()
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "</think></think>"
    assert events[-1].usage["reasoning_tokens"] == 0


def test_a_forced_tool_call_closes_the_reasoning_the_template_opened(core: Any) -> None:
    from tests.tinymodel import EMPTY_ARGS

    plain = core.count_tokens({"messages": HI, "tools": TOOLS})
    params = {"max_tokens": 1, "tool_choice": {"name": "get_time"}, "logit_bias": {token(core, EMPTY_ARGS): 100}}
    deltas, done = run(core, params, tools=TOOLS)
    calls = [c for d in deltas for c in d.tool_calls or []]
    assert [(c["name"], c["arguments"]) for c in calls] == [("get_time", "{}")]
    assert parts(deltas) == ("", "") and done.usage["reasoning_tokens"] == 0
    opening = '</think><tool_call>\n{"name": "get_time", "arguments": '
    assert done.usage["prompt_tokens"] == plain + len(core.m.tokenizer.encode(opening, add_special_tokens=False))


def test_a_forced_call_in_another_native_format_is_held_to_its_schema_after_the_reasoning(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The reasoning model told to write qwen3_coder calls: the forced opening closes the
    reasoning, and the grammar (worker/toolformats.py, behind the reasoning block) holds the
    random model's call to the function's schema."""
    import json

    import jsonschema

    from worker.core import EngineCore
    from worker.model import load_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny-think-coder"), think=True)
    cfg = ModelConfig(name="t", path=str(path), tool_parser="qwen3_coder")
    coder = EngineCore(load_model(cfg), cfg)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 6}, "days": {"type": "integer", "maximum": 9}},
        "required": ["city", "days"],
    }
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": schema}}]
    params = {"max_tokens": 200, "tool_choice": {"name": "get_weather"}, "parallel_tool_calls": False}
    deltas, done = run(coder, params, tools=tools)
    (call,) = [c for d in deltas for c in d.tool_calls or []]
    assert call["name"] == "get_weather"
    jsonschema.validate(json.loads(call["arguments"]), schema)
    assert parts(deltas) == ("", "") and done.finish_reason == "tool_calls"
