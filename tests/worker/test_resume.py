"""A resumed generation in-process: cut an undisturbed run after any delta, resume it on the
engine from what the client had (the deltas' token ids, text and tool calls), and the client's
text, usage and finish are exactly those of the undisturbed run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.config import ModelConfig
from shared.protocol import Delta, Done, Error, Generate


@pytest.fixture(scope="module")
def core(tiny_model: Path):  # type: ignore[no-untyped-def]
    from worker.core import EngineCore
    from worker.model import load_model

    cfg = ModelConfig(name="tiny", path=str(tiny_model), max_batch=4)
    return EngineCore(load_model(cfg), cfg)


def run(core, req: Generate, steps: int = 500) -> list[Any]:  # type: ignore[no-untyped-def]
    events = list(core.add(req))
    for _ in range(steps):
        if not core.has_work:
            break
        events += core.step()
    return events


def gen(rid: str, params: dict[str, Any]) -> Generate:
    return Generate(rid, "tiny", {"messages": [{"role": "user", "content": "Why is the sky blue"}]}, params)


def resumed_from(core, params: dict[str, Any], deltas: list[Delta], cut: int) -> tuple[str, Done]:  # type: ignore[no-untyped-def]
    """The client's whole text when the worker died after delta ``cut``, and the final done."""
    had = deltas[:cut]
    resume = {
        "tokens": [t for d in had for t in d.token_ids or []],
        "text": sum(len(d.text) for d in had),
        "tool_calls": 0,
    }
    events = run(core, gen(f"r{cut}", {**params, "resume": resume}))
    assert not [e for e in events if isinstance(e, Error)], events
    done = [e for e in events if isinstance(e, Done)]
    assert len(done) == 1
    return "".join(d.text for d in had) + "".join(e.text for e in events if isinstance(e, Delta)), done[0]


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0, "max_tokens": 40},
        {"temperature": 0, "max_tokens": 40, "presence_penalty": 1.0, "frequency_penalty": 0.5},
        {"temperature": 0, "max_tokens": 40, "presence_penalty": 1.0, "stop": ["ab", "of o"]},
        {"temperature": 1.0, "seed": 7, "max_tokens": 40},
        {
            "temperature": 1.0,
            "seed": 7,
            "max_tokens": 40,
            "response_format": {
                "type": "json_schema",
                "schema": {"type": "array", "items": {"type": "string"}, "minItems": 10},
            },
        },
    ],
    ids=["greedy", "penalties", "stop-strings", "seeded", "grammar"],
)
def test_a_resume_after_any_delta_gives_the_undisturbed_answer(core, params: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    events = run(core, gen("whole", params))
    deltas = [e for e in events if isinstance(e, Delta)]
    (done,) = [e for e in events if isinstance(e, Done)]
    text = "".join(d.text for d in deltas)
    assert sum(len(d.token_ids or []) for d in deltas) <= done.usage["completion_tokens"]
    assert len(deltas) >= 3, deltas
    for cut in range(1, len(deltas)):
        got, resumed = resumed_from(core, params, deltas, cut)
        assert got == text, f"cut after delta {cut}"
        assert resumed.finish_reason == done.finish_reason
        assert resumed.usage["completion_tokens"] == done.usage["completion_tokens"]
        assert resumed.usage["prompt_tokens"] == done.usage["prompt_tokens"]


def test_a_resume_that_claims_more_text_than_its_tokens_give_fails_clearly(core) -> None:  # type: ignore[no-untyped-def]
    events = run(core, gen("claim", {"temperature": 0, "max_tokens": 3, "resume": {"tokens": [5, 6], "text": 999}}))
    assert len(events) == 1 and isinstance(events[0], Error), events
    assert events[0].code == "generation_failed" and "could not be resumed" in events[0].message


def test_a_bad_resume_parameter_is_refused_naming_it(core) -> None:  # type: ignore[no-untyped-def]
    events = run(core, gen("bad", {"temperature": 0, "resume": {"tokens": [-1]}}))
    assert len(events) == 1 and isinstance(events[0], Error) and events[0].param == "resume", events


def test_text_held_back_for_a_stop_string_is_sent_after_the_resume(core) -> None:  # type: ignore[no-untyped-def]
    varied = {"temperature": 0, "max_tokens": 40, "presence_penalty": 1.0, "frequency_penalty": 0.5}
    plain = [e for e in run(core, gen("plain", varied)) if isinstance(e, Delta)]
    text = "".join(d.text for d in plain)
    chars_at = {0: 0}  # tokens generated -> characters a run without hold-back has sent
    for d in plain:
        chars_at[d.tokens] = chars_at[max(chars_at)] + len(d.text)
    # a stop string that starts with the last character of a token written in the middle and can
    # never complete: that character is held back after the token, and sent with the next one
    middle = next(d for d in plain[len(plain) // 2 :] if len(d.token_ids or []) == 1 and len(d.text.strip()) >= 2)
    params = {**varied, "stop": [middle.text[-1] + "\u2603"]}
    deltas = [e for e in run(core, gen("held", params)) if isinstance(e, Delta)]
    assert "".join(d.text for d in deltas) == text
    held = [
        cut
        for cut in range(1, len(deltas))
        if sum(len(d.text) for d in deltas[:cut]) < chars_at[deltas[cut - 1].tokens]
    ]
    assert held, "no delta ended while text was held back"
    for cut in held:
        got, _ = resumed_from(core, params, deltas, cut)
        assert got == text, f"cut after delta {cut}"


def test_logprobs_cover_every_token_once_across_a_resume(core) -> None:  # type: ignore[no-untyped-def]
    params = {"temperature": 0, "max_tokens": 20, "logprobs": 2, "presence_penalty": 1.0}
    events = run(core, gen("lp", params))
    deltas = [e for e in events if isinstance(e, Delta)]
    whole = [e["token"] for d in deltas for e in d.logprobs or []]
    assert len(whole) == 20
    cut = len(deltas) // 2
    had = deltas[:cut]
    resume = {"tokens": [t for d in had for t in d.token_ids or []], "text": sum(len(d.text) for d in had)}
    more = [e for e in run(core, gen("lp2", {**params, "resume": resume})) if isinstance(e, Delta)]
    assert [e["token"] for d in had + more for e in d.logprobs or []] == whole


# -- reasoning, its budget, and tool calls: the tiny model's reasoning variant ------------------

TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def think(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.tinymodel import build_tiny_model
    from worker.core import EngineCore
    from worker.model import load_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny-think-resume"), think=True)
    cfg = ModelConfig(name="t", path=str(path))
    return EngineCore(load_model(cfg), cfg)


def answer(deltas: list[Delta]) -> tuple[str, str, list[tuple[int, str, str]]]:
    """What a client assembles: reasoning, text, and the calls (ids are random per worker)."""
    calls = [(c["index"], c["name"], c["arguments"]) for d in deltas for c in d.tool_calls or []]
    return "".join(d.reasoning for d in deltas), "".join(d.text for d in deltas), calls


@pytest.mark.parametrize("case", ["budget", "tool-calls"])
def test_reasoning_its_budget_and_tool_calls_carry_over_a_resume(think: Any, case: str) -> None:
    from tests.tinymodel import CALL_TEXT, THOUGHT

    forced = think.m.tokenizer.convert_tokens_to_ids(THOUGHT if case == "budget" else CALL_TEXT)
    params: dict[str, Any] = {"temperature": 0, "max_tokens": 8, "logit_bias": {str(forced): 100}}
    params["thinking_budget"] = 3 if case == "budget" else 1
    inp: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if case == "tool-calls":
        inp["tools"] = TOOLS
    events = run(think, Generate("whole", "t", inp, params))
    deltas = [e for e in events if isinstance(e, Delta)]
    (done,) = [e for e in events if isinstance(e, Done)]
    whole = answer(deltas)
    if case == "budget":  # 3 thoughts, the forced end marker, then content: the budget was kept
        assert whole[:2] == (THOUGHT * 3, THOUGHT * 4)
    else:  # a call inside the reasoning is reasoning; after it, each is a call
        assert whole[0] == CALL_TEXT and len(whole[2]) >= 2
    for cut in range(1, len(deltas)):
        had = deltas[:cut]
        resume = {
            "tokens": [t for d in had for t in d.token_ids or []],
            "text": sum(len(d.text) for d in had),
            "reasoning": sum(len(d.reasoning) for d in had),
            "tool_calls": sum(len(d.tool_calls or []) for d in had),
        }
        more = run(think, Generate(f"r{cut}", "t", inp, {**params, "resume": resume}))
        assert not [e for e in more if isinstance(e, Error)], more
        (again,) = [e for e in more if isinstance(e, Done)]
        assert answer(had + [e for e in more if isinstance(e, Delta)]) == whole, f"cut after delta {cut}"
        assert again.finish_reason == done.finish_reason
        assert again.usage["completion_tokens"] == done.usage["completion_tokens"]
        assert again.usage["reasoning_tokens"] == done.usage["reasoning_tokens"]
