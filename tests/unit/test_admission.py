"""worker.admission: arrivals wait while others decode and more keep coming, for at most
``hold_steps`` steps, and leave together; nothing waits when nothing decodes or the rule is 0."""

from __future__ import annotations

from worker.admission import Admission, Arrival


def arrival(name: str) -> Arrival:
    return Arrival(name, [[1, 2]], 4, None, [], None, [])


def test_nothing_waits_without_a_hold_or_without_decoding() -> None:
    assert not Admission(0).holds(decoding=True)
    assert not Admission(3).holds(decoding=False)
    assert Admission(3).holds(decoding=True)


def test_held_arrivals_leave_together_after_the_oldest_waited_its_steps() -> None:
    a = Admission(2)
    a.hold(arrival("x"))
    assert a.due(decoding=True) == []  # 1 step
    a.hold(arrival("y"))
    assert a.due(decoding=True) == []  # 2 steps
    a.hold(arrival("w"))  # still coming, but the oldest has waited its 2 steps
    assert [r.live for r in a.due(decoding=True)] == ["x", "y", "w"]
    assert a.held == [] and a.due(decoding=True) == []
    a.hold(arrival("z"))  # a new group counts its own steps
    assert a.due(decoding=True) == []


def test_held_arrivals_leave_at_the_first_step_without_a_new_one() -> None:
    a = Admission(8)
    a.hold(arrival("x"))
    assert a.due(decoding=True) == []  # it just came: more may follow
    a.hold(arrival("y"))
    assert a.due(decoding=True) == []
    assert [r.live for r in a.due(decoding=True)] == ["x", "y"]  # none came: the burst is over
    a.hold(arrival("z"))  # a lone arrival waits one step
    assert a.due(decoding=True) == []
    assert [r.live for r in a.due(decoding=True)] == ["z"]


def test_held_arrivals_leave_at_once_when_nothing_decodes_any_more() -> None:
    a = Admission(5)
    a.hold(arrival("x"))
    assert [r.live for r in a.due(decoding=False)] == ["x"]


def test_a_dropped_arrival_is_forgotten() -> None:
    a = Admission(1)
    a.hold(arrival("x"))
    a.hold(arrival("y"))
    assert a.drop("x") and not a.drop("x")
    a.due(decoding=True)
    assert [r.live for r in a.due(decoding=True)] == ["y"]
    a.hold(arrival("z"))
    a.clear()
    assert a.held == []


def test_an_arrival_rendered_aside_leaves_when_it_would_have_inline() -> None:
    """worker/prep.py: an arrival read before step N is rendered during it and held after it,
    not fresh (``coming`` said so before step N); it leaves before step N+1 as an arrival
    held inline before step N does, and a burst read meanwhile still keeps it."""
    inline, aside = Admission(8), Admission(8)
    inline.hold(arrival("x"))
    assert inline.due(decoding=True) == []  # step N: it just came
    assert [r.live for r in inline.due(decoding=True)] == ["x"]  # step N+1

    aside.coming()  # read before step N, rendering
    aside.quiet()  # step N, with nothing held yet
    aside.hold(arrival("x"), fresh=False)  # rendered: held after step N
    assert [r.live for r in aside.due(decoding=True)] == ["x"]  # step N+1, as inline

    aside.coming()
    aside.quiet()
    aside.hold(arrival("y"), fresh=False)
    aside.coming()  # more read before step N+1: the burst goes on
    assert aside.due(decoding=True) == []
    aside.hold(arrival("z"), fresh=False)
    assert [r.live for r in aside.due(decoding=True)] == ["y", "z"]
