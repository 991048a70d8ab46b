"""Tool calling in the engine core, in-process, on the tiny model's tool variant: the wire
messages it emits (Delta.tool_calls, Done "tool_calls"/"length") and its refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.config import ModelConfig
from shared.protocol import Delta, Done, Error, Generate
from tests.tinymodel import EMPTY_ARGS, build_tiny_model

TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-tools-core"), tools=True)


def make_core(path: Path, **cfg: Any) -> Any:
    from worker.core import EngineCore
    from worker.model import load_model

    model_cfg = ModelConfig(name="t", path=str(path), **cfg)
    return EngineCore(load_model(model_cfg), model_cfg)


@pytest.fixture(scope="module")
def core(tool_model: Path) -> Any:
    return make_core(tool_model)


def gen(rid: str, params: dict[str, Any], **inp: Any) -> Generate:
    return Generate(
        id=rid,
        model="t",
        input={"messages": [{"role": "user", "content": "time?"}], "tools": TOOLS, **inp},
        params={"temperature": 0, **params},
    )


def run(core: Any, req: Generate) -> list[Any]:
    events = core.add(req)
    while core.has_work:
        events += core.step()
    return events


def test_a_forced_complete_call_is_one_delta_with_the_call(core: Any) -> None:
    empty_args = core.m.tokenizer.encode(EMPTY_ARGS, add_special_tokens=False)[0]
    params = {"tool_choice": {"name": "get_time"}, "max_tokens": 1, "logit_bias": {str(empty_args): 100}}
    events = run(core, gen("a", params))
    (delta,) = [e for e in events if isinstance(e, Delta)]
    assert delta.text == ""
    (call,) = delta.tool_calls or []
    assert set(call) == {"index", "id", "name", "arguments"}
    assert call["index"] == 0 and call["name"] == "get_time" and json.loads(call["arguments"]) == {}
    (done,) = [e for e in events if isinstance(e, Done)]
    assert done.finish_reason == "length"


def test_tool_choice_none_means_no_tools_in_the_prompt(core: Any) -> None:
    offered = core.count_tokens({"messages": [{"role": "user", "content": "x"}], "tools": TOOLS})
    plain = core.count_tokens({"messages": [{"role": "user", "content": "x"}]})
    assert offered > plain
    events = run(core, gen("n", {"tool_choice": "none", "max_tokens": 1}))
    (done,) = [e for e in events if isinstance(e, Done)]
    assert done.usage["prompt_tokens"] == core.count_tokens({"messages": [{"role": "user", "content": "time?"}]})


def test_bad_tool_choice_is_refused_naming_it(core: Any) -> None:
    (err,) = core.add(gen("b", {"tool_choice": "always"}))
    assert isinstance(err, Error) and err.param == "tool_choice"


def test_a_format_without_a_call_opening_refuses_forced_choices(tool_model: Path) -> None:
    """pythonic has an opening and a call grammar now (worker/toolformats.py): a forced choice
    runs; a format with neither (one mlx-lm adds later) refuses it, naming the format."""
    from worker.templating import TemplateError, _prefill
    from worker.toolcalls import ToolSyntax

    pythonic = make_core(tool_model, tool_parser="pythonic")
    assert pythonic.tool_syntax.name == "pythonic"
    events = run(pythonic, gen("p", {"tool_choice": "required", "max_tokens": 1}))
    assert not [e for e in events if isinstance(e, Error)] and isinstance(events[-1], Done)
    events = run(pythonic, gen("q", {"tool_choice": "auto", "max_tokens": 1}))
    assert not [e for e in events if isinstance(e, Error)] and isinstance(events[-1], Done)
    future = ToolSyntax("future_format", "<call>", "</call>", lambda text, tools: None)
    with pytest.raises(TemplateError) as e:
        _prefill(future, "required")
    assert e.value.param == "tool_choice" and "future_format" in str(e.value)


def test_an_unknown_tool_parser_fails_the_load(tool_model: Path) -> None:
    with pytest.raises(ValueError, match="no such tool parser"):
        make_core(tool_model, tool_parser="no_such_parser")


def test_a_template_without_tools_refuses_them(tiny_model: Path) -> None:
    plain = make_core(tiny_model, tools="off")  # "auto" would offer them in the generic format
    (err,) = plain.add(gen("t", {}))
    assert isinstance(err, Error) and err.param == "tools" and "does not support tools" in err.message
