"""gateway.residency and shared.units: keep-alive durations, sizes, LRU victims and fit checks
(pure: no processes)."""

from __future__ import annotations

import math

import pytest

from gateway.residency import Limits, Resident, due, expires_at, plan_load, startup_problem
from shared.units import FOREVER, format_duration, format_size, parse_duration, parse_size

GiB = 2**30


# ---- durations and sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0.0), (2, 2.0), (1.5, 1.5), ("0", 0.0), ("45", 45.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0)]
    + [("1h30m", 5400.0), ("250ms", 0.25), ("2d", 172800.0), (" 5M ", 300.0), ("1.5m", 90.0)]
    + [(-1, FOREVER), ("-1", FOREVER), (-0.5, FOREVER), ("forever", FOREVER), ("Forever", FOREVER)],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "soon", "5 m", "m5", "5mm", "1h-2m", True, None, [5], float("nan"), "5x"])
def test_bad_durations_are_refused_with_the_accepted_spellings(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [(0, 0), (123, 123), ("123", 123), ("16GiB", 16 * GiB), ("16 GiB", 16 * GiB), ("16G", 16 * GiB)]
    + [("8GB", 8 * 10**9), ("512MiB", 512 * 2**20), ("1.5GiB", int(1.5 * GiB)), ("2kb", 2000)],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["lots", "16 parsecs", "-5", -5, True, None, "GiB"])
def test_bad_sizes_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


def test_formatting_for_people() -> None:
    assert format_size(16 * GiB) == "16.0 GiB" and format_size(None) == "-" and format_size(5) == "5 B"
    assert format_duration(FOREVER) == "forever" and format_duration(59.6) == "1m 0s"
    assert format_duration(3 * 3600 + 120) == "3h 2m"


# ---- keep-alive expiry -----------------------------------------------------------------------


def test_expiry_counts_from_last_use_or_readiness_whichever_is_later() -> None:
    assert expires_at(last_used=100.0, ready_since=50.0, keep_alive=5.0) == 105.0
    assert expires_at(last_used=10.0, ready_since=50.0, keep_alive=5.0) == 55.0  # loaded by admin, never used
    assert expires_at(last_used=10.0, ready_since=50.0, keep_alive=FOREVER) == FOREVER
    assert expires_at(last_used=10.0, ready_since=50.0, keep_alive=0.0) == 50.0


def r(name: str, used: float, est: int = GiB, **kw: bool) -> Resident:
    return Resident(name=name, estimate=est, last_used=used, **kw)


def test_due_only_idle_ready_unpinned_models_past_their_expiry() -> None:
    models = [
        (r("expired", 1), 10.0),
        (r("not-yet", 1), 30.0),
        (r("busy", 1, idle=False), 10.0),
        (r("pinned", 1, pinned=True), 10.0),
        (r("loading", 1, ready=False), 10.0),
        (r("leaving", 1, leaving=True), 10.0),
        (r("forever", 1), math.inf),
    ]
    assert due(models, now=20.0) == ["expired"]
    assert due(models, now=30.0) == ["expired", "not-yet"]


# ---- loading under limits --------------------------------------------------------------------


def test_no_limits_loads_at_once() -> None:
    plan = plan_load("new", 100 * GiB, [r("a", 1), r("b", 2)], Limits())
    assert plan.victims == () and plan.wait is None and plan.never is None


def test_room_left_loads_at_once_without_evicting() -> None:
    plan = plan_load("new", GiB, [r("a", 1)], Limits(max_loaded=2, budget=2 * GiB))
    assert plan.victims == () and plan.wait is None


def test_max_loaded_evicts_the_least_recently_used_idle_model_then_waits_for_it_to_exit() -> None:
    residents = [r("recent", 9), r("oldest", 1), r("older", 5)]
    plan = plan_load("new", GiB, residents, Limits(max_loaded=3))
    assert plan.victims == ("oldest",)
    assert plan.wait is not None and "oldest" in plan.wait  # its memory is free once its workers exit


def test_just_enough_victims_for_the_budget_oldest_first() -> None:
    residents = [r("a", 1, est=2 * GiB), r("b", 2, est=2 * GiB), r("c", 3, est=2 * GiB)]
    plan = plan_load("new", 3 * GiB, residents, Limits(budget=7 * GiB))  # 6 + 3 > 7: free 2 GiB
    assert plan.victims == ("a",)
    plan = plan_load("new", 5 * GiB, residents, Limits(budget=7 * GiB))  # needs two gone
    assert plan.victims == ("a", "b")


def test_busy_pinned_and_loading_models_are_never_victims() -> None:
    residents = [r("busy", 1, idle=False), r("pinned", 2, pinned=True), r("loading", 3, ready=False), r("idle", 9)]
    plan = plan_load("new", GiB, residents, Limits(max_loaded=4))
    assert plan.victims == ("idle",)


def test_no_eviction_when_even_all_candidates_would_not_make_room() -> None:
    residents = [r("busy", 1, idle=False), r("idle", 2)]
    plan = plan_load("new", GiB, residents, Limits(max_loaded=1))
    assert plan.victims == ()
    assert plan.wait is not None and "max_loaded_models = 1" in plan.wait and "busy" in plan.wait
    plan = plan_load("new", 2 * GiB, [r("big", 1, est=3 * GiB, idle=False)], Limits(budget=4 * GiB))
    assert plan.victims == () and plan.wait is not None
    assert "memory_budget 4.0 GiB" in plan.wait and "big" in plan.wait


def test_leaving_models_hold_memory_until_they_exit_but_are_not_chosen_again() -> None:
    residents = [r("leaving", 1, leaving=True), r("other", 2)]
    plan = plan_load("new", GiB, residents, Limits(max_loaded=2))
    assert plan.victims == ()  # once "leaving" is gone there is room
    assert plan.wait is not None and "leaving" in plan.wait
    plan = plan_load("new", GiB, [r("other", 2)], Limits(max_loaded=2))
    assert plan.victims == () and plan.wait is None


def test_a_model_bigger_than_the_budget_can_never_load() -> None:
    plan = plan_load("huge", 5 * GiB, [], Limits(budget=4 * GiB))
    assert plan.never is not None and "memory_budget" in plan.never and "huge" in plan.never
    assert plan.victims == ()


def test_startup_checks_the_models_that_must_be_resident_together() -> None:
    assert startup_problem([("a", GiB), ("b", GiB)], Limits(max_loaded=2, budget=2 * GiB)) is None
    assert "max_loaded_models = 1" in (startup_problem([("a", GiB), ("b", GiB)], Limits(max_loaded=1)) or "")
    assert "memory_budget" in (startup_problem([("a", GiB), ("b", GiB)], Limits(budget=GiB + 1)) or "")
    assert "'a'" in (startup_problem([("a", 3 * GiB)], Limits(budget=2 * GiB)) or "")
