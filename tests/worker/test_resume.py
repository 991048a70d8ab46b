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
    return Generate(rid, "tiny", {"messages": [{"role": "user", "content": "resume me"}]}, params)


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
        {"temperature": 0, "max_tokens": 40, "repetition_penalty": 1.3, "presence_penalty": 0.5},
        {"temperature": 0, "max_tokens": 40, "stop": ["ab", "the"]},
        {"temperature": 1.0, "seed": 7, "max_tokens": 40},
    ],
    ids=["greedy", "penalties", "stop-strings", "seeded"],
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
