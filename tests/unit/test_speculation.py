"""The pure parts of speculative decoding: prompt lookup, the gate, the step plan, widths."""

from __future__ import annotations

import random

from shared.device import speculation_cost, verify_width, verify_widths
from worker.lookup import PromptLookup
from worker.speculation import Gate, StepCost, draft_cap, expected, may_pay, plan


def test_lookup_proposes_what_followed_the_longest_recent_match() -> None:
    p = PromptLookup([1, 2, 3, 4, 5, 6, 1, 2, 3])
    assert p.propose(3) == [4, 5, 6]
    p.extend([4])
    assert p.propose(2) == [5, 6]  # the 4-gram 1 2 3 4 matched; what followed it
    assert PromptLookup([7, 8, 9]).propose(3) == []  # nothing repeats
    assert PromptLookup([1, 2, 9, 1, 2, 7, 1, 2]).propose(2) == [7, 1]  # the most recent occurrence wins
    assert PromptLookup([5, 1, 2, 8, 3, 1, 2]).propose(0) == []
    single = PromptLookup([4, 9, 4])  # one token matching is not enough (n_min = 2)
    assert single.propose(2) == []


def test_lookup_proposes_after_tokens_assumed_ahead_of_its_history() -> None:
    """A chained step's drafts: the suffix is taken after tokens the step in flight is assumed
    to accept, and the continuation may run on into them."""
    p = PromptLookup([1, 2, 3, 4, 5, 6, 1, 2])
    assert p.propose(3, ahead=[3]) == [4, 5, 6]  # the suffix (2, 3) includes the assumed token
    assert p.propose(3) == [3, 4, 5]  # the same history without it
    q = PromptLookup([7, 8, 9, 7])
    # runs on past the history into what is assumed, then into itself (the text repeats)
    assert q.propose(4, ahead=[8]) == [9, 7, 8, 9]
    assert PromptLookup([5, 3, 3, 3]).propose(4) == [3, 3, 3, 3]  # a loop of one token goes on
    assert PromptLookup([1, 2, 3, 1, 2]).propose(5) == [3, 1, 2, 3, 1]
    assert PromptLookup([1, 2]).propose(2, ahead=[3]) == []
    assert p.propose(0, ahead=[3]) == []


def test_a_sequence_without_drafts_gets_a_fresh_try_later_and_waits_longer_each_time() -> None:
    g = Gate()
    g.record(4, 4)
    assert g.rate == 1.0
    g.record(8, 0)
    g.record(8, 0)
    assert g.rate == 0.25  # the plan drafts little or nothing at this rate
    first = g.pause
    for _ in range(first - 1):
        g.tick(False)
    assert g.rate == 0.25
    g.tick(False)
    assert g.rate == 0.6 and g.pause == 2 * first  # a fresh try; the next one waits longer
    g.record(4, 4)  # it paid: back to the short wait
    assert g.pause == first


def test_guesses_while_not_drafting_bring_a_sequence_back_before_its_pause() -> None:
    """A copy interrupted by an edit: its drafts were rejected and the plan stopped drafting;
    once its lookup guesses the coming tokens again, its rate recovers within a few steps,
    long before the pause's fresh try, while misses keep it where it was."""
    cpu = StepCost(wait=0.15, position=0.1)
    copying, prose = Gate(), Gate()
    for g in (copying, prose):
        g.record(3, 0)
        g.record(3, 0)
        assert plan([3] * 8, [g.rate] * 8, cpu) == [0] * 8
    steps = 0
    while plan([3] * 8, [copying.rate] * 8, cpu) == [0] * 8:
        copying.tick(False)
        copying.observe(True)
        prose.tick(False)
        prose.observe(False)
        steps += 1
    assert steps <= 4 < copying.pause, (steps, copying)
    assert prose.rate < 0.25 and plan([3] * 8, [prose.rate] * 8, cpu) == [0] * 8


def test_the_plan_drafts_only_what_pays_for_itself() -> None:
    gpu = StepCost(wait=1.0, position=0.01)
    assert plan([8], [0.75], gpu) == [8]  # one stream: 2.7 expected accepted tokens pay for the wait
    assert plan([2], [0.3], gpu) == [0]  # 0.39 expected tokens don't
    # eight streams, two with short drafts: not worth making all eight wait
    assert plan([3, 3, 0, 0, 0, 0, 0, 0], [0.8, 0.8, 1, 1, 1, 1, 1, 1], gpu) == [0] * 8
    assert plan([8] * 8, [0.75] * 8, gpu) == [8] * 8
    hosted = StepCost(wait=0.5, position=0.01, row_wait=0.1)  # the host's check grows with the rows
    assert hosted.of(1, 8) < hosted.of(8, 8) and hosted.of(8, 0) == 1.0
    assert plan([8], [0.6], hosted) == [8] and plan([8] * 8, [0.6] * 8, hosted) == [0] * 8
    assert plan([], [], gpu) == [] and plan([0, 0], [1.0, 1.0], gpu) == [0, 0]


def test_on_a_cpu_every_row_pays_for_the_width_so_the_plan_weighs_all_rows() -> None:
    cpu = StepCost(wait=0.15, position=0.1)
    assert cpu.of(1, 4) == 1.0 + 0.15 + 0.4 and cpu.of(8, 0) == 1.0
    assert abs(cpu.of(4, 2) - (1.15 + 0.1 * 2 * 2)) < 1e-9
    # one stream: drafts as far as its rate pays for the width
    assert plan([8], [0.9], cpu) == [8]
    assert plan([8], [0.4], cpu) == [2]  # a wider step costs more than the third draft brings
    # the width is a rectangle's: a row with poor drafts rides along at no extra cost
    assert plan([3, 4], [0.05, 0.9], cpu) == [3, 4]
    # two rows of eight with good drafts make six wait at 1.5x: prose in a busy batch stays plain
    assert plan([3, 3, 0, 0, 0, 0, 0, 0], [0.9, 0.9, 1, 1, 1, 1, 1, 1], cpu) == [0] * 8
    # eight rows copying a file: everyone drafts
    assert plan([3] * 8, [0.8] * 8, cpu) == [3] * 8
    assert abs(expected(0.5, 3) - 0.875) < 1e-9 and expected(1.0, 4) == 4


def test_rates_alone_tell_when_no_drafts_could_pay() -> None:
    gpu = StepCost(wait=1.0, position=0.01)
    assert not may_pay([1] * 64, [0.6] * 64, gpu)  # a busy batch of prose on a GPU: no lookups
    assert may_pay([8], [0.75], gpu)
    rng = random.Random(0)
    drafted = 0
    for _ in range(500):  # the bound never refuses what the plan would draft
        rows = rng.randint(1, 16)
        caps = [rng.randint(0, 8) for _ in range(rows)]
        rates = [rng.random() for _ in range(rows)]
        for cost in (gpu, StepCost(wait=0.15, position=0.1)):
            if any(plan(caps, rates, cost)):
                drafted += 1
                assert may_pay(caps, rates, cost)
    assert drafted > 50


def test_the_budget_is_shared_out_and_widths_are_bucketed_on_a_gpu() -> None:
    assert draft_cap(8, 32, 1) == 8 and draft_cap(8, 32, 8) == 3 and draft_cap(8, 32, 32) == 0
    assert [verify_width("cuda", w) for w in (1, 2, 3, 5, 9)] == [1, 2, 4, 8, 16]
    assert [verify_width("cpu", w) for w in (1, 3, 5)] == [1, 3, 5]
    assert verify_widths("cuda", 7) == [2, 4, 8] and verify_widths("cuda", 0) == []
    assert speculation_cost("cpu")[0] < speculation_cost("cuda")[0]
