"""The resume bookkeeping: what the session keeps of a generation, whom a worker's death is
charged to, and what becomes of each generation after it (gateway/resume.py); and the worker's
split of a replay into what the client has and what it does not (worker/resume.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.resume import BYSTANDER_DEATHS, Fate, Progress, died, fate
from shared.protocol import Delta, Done
from worker.resume import Resume, ResumeMismatch, unsent


def started(*ids: int) -> Progress:
    p = Progress()
    p.forwarded(Delta("r", "ab", len(ids), token_ids=list(ids)))
    return p


def test_progress_keeps_tokens_text_and_calls_in_order() -> None:
    p = Progress()
    assert not p.started
    p.forwarded(Delta("r", "Hel", 2, token_ids=[1, 2]))
    p.forwarded(Delta("r", "", 3, token_ids=[3]))
    p.forwarded(
        Delta("r", "lo", 5, tool_calls=[{"index": 0, "id": "c", "name": "f", "arguments": "{}"}], token_ids=[4, 5])
    )
    assert p.started and p.complete
    p.forwarded(Delta("r", "", 6, reasoning="hmm", token_ids=[6]))
    assert p.resume() == {"tokens": [1, 2, 3, 4, 5, 6], "text": 5, "tool_calls": 1, "reasoning": 3}


def test_a_delta_without_token_ids_makes_it_unresumable() -> None:
    p = Progress()
    p.forwarded(Delta("r", "x", 1))
    assert not p.complete
    died([p])
    assert fate(p, 1) is Fate.WORKER_DIED


def test_resume_attempts_zero_fails_a_started_generation_and_retries_an_unstarted_one() -> None:
    running, waiting = started(1), Progress()
    died([running, waiting])
    assert fate(running, 0) is Fate.WORKER_DIED
    assert fate(waiting, 0) is Fate.RUN_AGAIN  # re-dispatched once, as before resumes existed


def test_the_first_death_is_charged_to_everyone_and_each_is_resumed_once() -> None:
    held = [started(1), started(2), Progress()]
    died(held)
    assert [p.charged for p in held] == [1, 1, 1]
    assert all(fate(p, 1) is Fate.RUN_AGAIN for p in held)


def test_a_lone_suspect_is_charged_and_fails_as_poison_while_bystanders_go_on() -> None:
    poison, old = started(1), started(2)
    died([poison, old])  # nobody known: both charged
    fresh = [started(3), started(4)]
    died([poison, *fresh])  # only the poison request was charged before: it is the suspect
    assert poison.charged == 2 and fate(poison, 1) is Fate.POISON
    assert [p.charged for p in fresh] == [0, 0] and all(fate(p, 1) is Fate.RUN_AGAIN for p in fresh)


def test_several_suspects_are_not_charged_but_put_on_probation() -> None:
    a, b, c = started(1), started(2), started(3)
    died([a, b, c])
    died([a, b, c])  # the same three again: who is it?
    assert [p.charged for p in (a, b, c)] == [1, 1, 1]
    assert all(p.isolate for p in (a, b, c)) and all(fate(p, 1) is Fate.RUN_AGAIN for p in (a, b, c))
    a.on_probation = True  # the session runs one of them at a time
    died([a, b, c])  # the one on probation is the suspect, the others are bystanders
    assert (a.charged, b.charged, c.charged) == (2, 1, 1)
    assert fate(a, 1) is Fate.POISON and fate(b, 1) is Fate.RUN_AGAIN


def test_more_resume_attempts_allow_more_charged_deaths() -> None:
    p = started(1)
    for n in range(1, 4):
        died([p])
        assert p.charged == n
        assert fate(p, 3) is Fate.RUN_AGAIN
    died([p])
    assert fate(p, 3) is Fate.POISON


def test_a_bystander_is_not_resumed_forever() -> None:
    p, q = started(1), started(2)
    died([p, q])  # both charged once
    died([q])  # q alone: charged again
    for _ in range(BYSTANDER_DEATHS):
        suspect = started(9)
        suspect.on_probation = True
        died([p, suspect])
    assert p.charged == 1 and p.deaths == BYSTANDER_DEATHS + 1
    assert fate(p, 1) is Fate.RUN_AGAIN
    died([p, Progress()])  # p is the only one charged before: the suspect now
    assert fate(p, 1) is Fate.POISON


def test_the_backstop_ends_a_bystander_that_keeps_losing_workers() -> None:
    p = started(1)
    died([p])
    for _ in range(BYSTANDER_DEATHS + 1):
        suspect = started(9)
        suspect.on_probation = True
        died([p, suspect])
    assert p.charged == 1 and fate(p, 1) is Fate.WORKER_DIED


# -- the worker's side ------------------------------------------------------------------------


def test_resume_param_is_checked() -> None:
    assert Resume.of({}, 10) is None
    assert Resume.of({"resume": {"tokens": [1, 9], "text": 3}}, 10) == Resume([1, 9], 3, 0, 0)
    assert Resume.of({"resume": {"tokens": [1], "tool_calls": 2, "reasoning": 5}}, 10) == Resume([1], 0, 2, 5)
    bad_ones = (
        {"tokens": []},
        {"tokens": [10]},
        {"tokens": [True]},
        {"tokens": [1], "text": -1},
        {"tokens": [1], "reasoning": "x"},
        [],
    )
    for bad in bad_ones:
        with pytest.raises(ValueError):
            Resume.of({"resume": bad}, 10)


CALL = {"index": 0, "id": "call_1", "name": "f", "arguments": "{}"}


def test_unsent_drops_what_the_client_has_and_keeps_the_held_back_rest() -> None:
    replay = [
        Delta("r", "", 1, reasoning="Let me see"),
        Delta("r", "Hello", 2),
        Delta("r", " wor", 3, tool_calls=[CALL]),
        Delta("r", "ld", 4),
        Done("r", "stop"),
    ]
    deltas, rest = unsent(Resume([1, 2, 3, 4], 9, 1, 10), replay)
    assert deltas == [Delta("r", "ld", 4, None, None, "", [])] and rest == [Done("r", "stop")]
    deltas, rest = unsent(Resume([1, 2, 3], 7, 0, 6), replay[:3])
    assert deltas == [
        Delta("r", "", 1, None, None, " see", []),
        Delta("r", "or", 3, None, [CALL], "", []),
    ]
    assert rest == []


def test_unsent_refuses_a_replay_that_gives_less_than_was_sent() -> None:
    with pytest.raises(ResumeMismatch):
        unsent(Resume([1], 10, 0), [Delta("r", "short", 1)])
    with pytest.raises(ResumeMismatch):
        unsent(Resume([1], 0, 2), [Delta("r", "text", 1, tool_calls=[CALL])])
    with pytest.raises(ResumeMismatch):
        unsent(Resume([1], 0, 0, 3), [Delta("r", "text", 1)])


def test_resume_attempts_is_one_by_default_and_never_negative(tmp_path: Path) -> None:
    from shared.config import ConfigError, load_toml

    ok = tmp_path / "ok.toml"
    ok.write_text('[[models]]\nname = "a"\npath = "x"\n')
    assert load_toml(ok).server.resume_attempts == 1
    off = tmp_path / "off.toml"
    off.write_text('[server]\nresume_attempts = 0\n[[models]]\nname = "a"\npath = "x"\n')
    assert load_toml(off).server.resume_attempts == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nresume_attempts = -1\n[[models]]\nname = "a"\npath = "x"\n')
    with pytest.raises(ConfigError, match="resume_attempts"):
        load_toml(bad)
