"""When a sequence drafts, and how many tokens: the gate that keeps speculation from losing.

A draft costs the target model extra positions in its forward pass, and a step with drafts
makes the whole batch wait for the host (its next inputs depend on what was accepted). On a GPU
positions are nearly free and the wait is what costs; on a CPU the reverse. So the batch has a
budget of positions per step (``speculative_budget``) shared by its rows, each sequence drafts
only as far as its recent acceptance makes worth it, and a step verifies drafts only when the
batch's expected accepted tokens pay for the wait (``plan``). A sequence that stops drafting
gets a fresh try later, waiting longer after each try that did not pay, so prose (which rarely
repeats its context) decodes as it would without speculation while a file being rewritten
drafts on every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_EMA = 0.5  # weight of the newest step in the acceptance average
_FIRST_PAUSE, _LONGEST_PAUSE = 8, 64  # steps without drafts before a fresh try, doubled per failed try
# a fresh try's rate: enough for one sequence alone to draft on any backend (plan), not enough
# for one sequence's try to hold up a batch of several on a GPU
_RETRY_RATE = 0.6


@dataclass
class Gate:
    """One sequence's recent acceptance (accepted ÷ drafted, averaged over its steps with
    drafts). The step plan (``plan``) drafts only what that rate pays for; a sequence left
    without drafts for ``pause`` steps gets a fresh try, and each try that doesn't
    pay doubles the wait for the next."""

    rate: float = 1.0  # an optimist at first: every sequence gets to try
    idle: int = 0  # steps since it last drafted
    pause: int = _FIRST_PAUSE

    def tick(self, drafted: bool) -> None:
        """A step went by, with or without drafts of this sequence."""
        self.idle = 0 if drafted else self.idle + 1
        if self.idle >= self.pause:
            self.rate, self.idle, self.pause = max(self.rate, _RETRY_RATE), 0, min(self.pause * 2, _LONGEST_PAUSE)

    def record(self, drafted: int, accepted: int) -> None:
        """A verified step: ``accepted`` of its ``drafted`` tokens were right."""
        if drafted <= 0:
            return
        self.rate = (1 - _EMA) * self.rate + _EMA * (accepted / drafted)
        if accepted == drafted:
            self.pause = _FIRST_PAUSE


@dataclass(frozen=True)
class StepCost:
    """What verifying drafts costs, relative to a plain decode step of the same batch: ``wait``,
    the device idling while the host checks a step with drafts (a plain step is launched before
    the previous one lands, a step with drafts only after: its inputs depend on what was
    accepted), and ``position``, one extra forward position at a batch of one (at a batch of B,
    ``position / B``). A CPU's forward pass dwarfs the host's work but pays for every position;
    a GPU's is the reverse (shared/device.py)."""

    wait: float
    position: float


def useful(rate: float, available: int, position: float) -> int:
    """How many of ``available`` drafts are worth a position: the j-th is accepted with
    probability about rate^j (all before it were), and is kept while that beats its cost."""
    if rate >= 1.0:
        return available
    if rate <= position:
        return 0
    return min(available, int(math.log(position) / math.log(rate)))


def expected(rate: float, n: int) -> float:
    """Accepted tokens expected from ``n`` drafts at per-token acceptance ``rate``."""
    return float(n) if rate >= 1.0 else rate * (1 - rate**n) / (1 - rate)


def plan(lengths: list[int], rates: list[float], cost: StepCost) -> list[int]:
    """How many drafts each row verifies this step, from the drafts it has (``lengths``) and
    its recent acceptance (``rates``): what its rate makes worth a position, and none at all
    when the batch's expected accepted drafts don't pay for the step it makes everyone wait
    for. A step with drafts gives B + Σ accepted tokens for 1 + wait + position·Σ drafts / B
    plain steps' time, so it pays when Σ expected accepted > wait·B + position·Σ drafts."""
    keep = [useful(rate, n, cost.position) for n, rate in zip(lengths, rates, strict=True)]
    gain = sum(expected(rate, n) for n, rate in zip(keep, rates, strict=True))
    if not any(keep) or gain <= cost.wait * len(keep) + cost.position * sum(keep):
        return [0] * len(keep)
    return keep


def draft_cap(tokens: int, budget: int, rows: int) -> int:
    """Drafts per sequence this step: ``tokens`` at most, and the batch's ``budget`` of forward
    positions shared out (each row also takes one position for its own next token)."""
    return max(0, min(tokens, budget // max(rows, 1) - 1))


@dataclass
class Tally:
    """What speculation did for one sequence: its ``done`` usage reports it."""

    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # of them, those the target model agreed with
    steps: int = 0  # decode steps (forward passes) it took part in

    def usage(self) -> dict[str, int]:
        return {"draft_tokens": self.drafted, "accepted_draft_tokens": self.accepted, "decode_steps": self.steps}
