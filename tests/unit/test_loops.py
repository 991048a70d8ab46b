"""The loop guard's cycle detection (pure)."""

from worker.loops import LoopGuard


def test_single_token_loop_needs_min_span() -> None:
    g = LoopGuard(repeats=4, max_cycle=8, min_span=10)
    assert g.check([7] * 9) is None
    assert g.check([1, 2] + [7] * 10) == (1, 10)


def test_multi_token_cycle_is_found_with_its_repeats() -> None:
    g = LoopGuard(repeats=3, max_cycle=8, min_span=6)
    cycle = [1, 2, 3, 4]
    assert g.check([9, 9] + cycle * 2) is None
    assert g.check([9, 9] + cycle * 3) == (4, 3)
    assert g.check(cycle * 5) == (4, 5)


def test_varied_text_is_not_a_loop() -> None:
    g = LoopGuard()
    assert g.check(list(range(200))) is None
    assert g.check([1, 2, 3, 1, 2, 4] * 3) is None


def test_cycles_longer_than_max_cycle_are_ignored() -> None:
    g = LoopGuard(repeats=2, max_cycle=4, min_span=2)
    assert g.check(list(range(6)) * 3) is None


def test_from_param() -> None:
    assert LoopGuard.from_param(True) == LoopGuard()
    assert LoopGuard.from_param(False) is None and LoopGuard.from_param(None) is None
    assert LoopGuard.from_param({"repeats": 5}) == LoopGuard(repeats=5)
