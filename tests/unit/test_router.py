"""gateway.router.pick: the least loaded ready replica (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.router import WorkerView, pick
from shared.protocol import WorkerState

R = WorkerState.READY


def w(wid: str, inflight: int = 0, limit: int = 8, state: WorkerState = R) -> WorkerView:
    return WorkerView(worker_id=wid, state=state, inflight=inflight, limit=limit)


def test_none_when_there_are_no_workers() -> None:
    assert pick([]) is None


@pytest.mark.parametrize("state", [WorkerState.LOADING, WorkerState.DRAINING, WorkerState.FAILED])
def test_none_when_no_worker_is_ready(state: WorkerState) -> None:
    assert pick([w("a", state=state), w("b", state=state)]) is None


def test_only_ready_workers_are_picked_even_if_others_are_idle() -> None:
    workers = [
        w("loading", 0, state=WorkerState.LOADING),
        w("draining", 0, state=WorkerState.DRAINING),
        w("failed", 0, state=WorkerState.FAILED),
        w("busy-but-ready", 7),
    ]
    assert pick(workers) == "busy-but-ready"


def test_least_inflight_wins() -> None:
    assert pick([w("a", 3), w("b", 1), w("c", 2)]) == "b"


def test_load_is_relative_to_the_limit() -> None:
    # a: 4/8 = 0.5 full; b: 3/4 = 0.75 full -> a, though it has more requests in flight.
    assert pick([w("b", 3, limit=4), w("a", 4, limit=8)]) == "a"
    assert pick([w("small", 1, limit=1), w("big", 2, limit=16)]) == "big"


def test_ties_take_the_first() -> None:
    assert pick([w("a", 1), w("b", 1), w("c", 1)]) == "a"
    assert pick([w("c", 0), w("b", 0), w("a", 0)]) == "c"
    # equal ratios with different absolute numbers are a tie too
    assert pick([w("x", 2, limit=4), w("y", 1, limit=2)]) == "x"
    # the first *ready* one, skipping a non-ready one before it
    assert pick([w("n", 0, state=WorkerState.LOADING), w("p", 0), w("q", 0)]) == "p"


def test_zero_limit_does_not_divide_by_zero() -> None:
    assert pick([w("a", 2, limit=0), w("b", 1, limit=0)]) == "b"


def test_accepts_any_iterable_once() -> None:
    assert pick(iter([w("a", 5), w("b", 0)])) == "b"
    assert pick(x for x in [w("a", 5), w("b", 0)]) == "b"


views = st.builds(
    WorkerView,
    worker_id=st.text(min_size=1, max_size=4),
    state=st.sampled_from(list(WorkerState)),
    inflight=st.integers(0, 64),
    limit=st.integers(0, 64),
)


@given(st.lists(views, max_size=8))
def test_pick_is_a_ready_worker_with_minimal_load(workers: list[WorkerView]) -> None:
    got = pick(workers)
    ready = [x for x in workers if x.state is R]
    if not ready:
        assert got is None
        return
    load = [x.inflight / max(x.limit, 1) for x in ready]
    first_min = ready[load.index(min(load))]
    assert got == first_min.worker_id


# -- prefix affinity ------------------------------------------------------------------------------


def test_preferred_worker_wins_when_about_as_free() -> None:
    from gateway.router import pick as pick_

    ws = [WorkerView("a", WorkerState.READY, 0, 8), WorkerView("b", WorkerState.READY, 1, 8)]
    assert pick_(ws, preferred="b") == "b"  # one more in flight: still b
    ws = [WorkerView("a", WorkerState.READY, 0, 8), WorkerView("b", WorkerState.READY, 3, 8)]
    assert pick_(ws, preferred="b") == "a"  # much busier: balance instead
    assert pick_(ws, preferred="gone") == "a"
    ws = [WorkerView("a", WorkerState.READY, 0, 8), WorkerView("b", WorkerState.LOADING, 0, 8)]
    assert pick_(ws, preferred="b") == "a"


def test_affinity_key_is_stable_across_a_conversations_turns() -> None:
    from gateway.router import affinity_key

    sys_ = {"role": "system", "content": "Be brief."}
    u1 = {"role": "user", "content": "Hi"}
    turn1 = {"messages": [sys_, u1]}
    turn2 = {"messages": [sys_, u1, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "More"}]}
    assert affinity_key(turn1) == affinity_key(turn2)
    assert affinity_key({"messages": [u1]}) == affinity_key({"messages": [u1, {"role": "assistant", "content": "x"}]})
    assert affinity_key(turn1) != affinity_key({"messages": [sys_, {"role": "user", "content": "Other"}]})
    assert affinity_key({"prompt": "abc"}) == affinity_key({"prompt": "abc"}) != affinity_key({"prompt": "abd"})
    assert affinity_key({"tokens": [1, 2]}) is None
