"""When a sequence drafts, and how many tokens: the gate that keeps speculation from losing.

A draft costs the target model extra positions in its forward pass, and a step with drafts
makes the whole batch wait for the host (its next inputs depend on what was accepted). On a GPU
positions are nearly free and the wait is what costs; on a CPU the reverse. So the batch has a
budget of positions per step (``speculative_budget``) shared by its rows, and a step verifies
drafts only when the rows' expected accepted tokens, from their recent acceptance, pay for the
wait and the step's width, for the rows together (``plan``: the product of their speed-ups).
A sequence that stops drafting gets a fresh try later, waiting longer after each try that did
not pay, so prose (which rarely repeats its context) decodes as it would without speculation
while a file being rewritten drafts on every step. While it does not draft, its rate still
follows what its prompt lookup would have guessed (``Gate.observe``, free: the guess is a few
dictionary reads), so a copy that resumes after an edit drafts again within a few steps instead
of after the pause.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_EMA = 0.5  # weight of the newest step in the acceptance average
_FIRST_PAUSE, _LONGEST_PAUSE = 8, 64  # steps without drafts before a fresh try, doubled per failed try
# a fresh try's rate: enough for one sequence alone to draft on any backend (plan), not enough
# for one sequence's try to hold up a batch of several on a GPU
_RETRY_RATE = 0.6
# weight of a step without drafts whose lookup guessed (or missed) the token that came: a
# guess costs nothing, so the rate follows the sequence while it does not draft (a file
# copied again after an edit drafts again within a few steps) but moves slower than a verified step
_SHADOW = 0.25


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

    def observe(self, guessed: bool) -> None:
        """A step without drafts: whether the draft this sequence could have made (its lookup's
        first token) was the token that came."""
        self._blend(float(guessed), _SHADOW)

    def record(self, drafted: int, accepted: int) -> None:
        """A verified step: ``accepted`` of its ``drafted`` tokens were right."""
        if drafted <= 0:
            return
        self._blend(accepted / drafted, _EMA)
        if accepted == drafted:
            self.pause = _FIRST_PAUSE

    def _blend(self, seen: float, weight: float) -> None:
        """Move the rate toward ``seen`` by ``weight`` (an exponential moving average)."""
        self.rate = (1 - weight) * self.rate + weight * seen


@dataclass(frozen=True)
class StepCost:
    """What a step with drafts costs, relative to a plain decode step of the same batch:
    ``wait`` (plus ``row_wait`` a row), the device idling while the host checks it and builds
    the next step (a plain step is launched before the previous one lands, a step with drafts
    only after: its inputs depend on what was accepted), and ``position``, each extra position
    of the step's width. The inputs are a rectangle, so every row pays for the longest row's
    drafts, drafting or not; a position costs ``position`` at a batch of one and grows with
    the batch as its square root (the batch's positions share the step's fixed costs). A CPU's
    forward pass dwarfs the host's work but pays for every position; a GPU's is the reverse
    (shared/device.py)."""

    wait: float
    position: float
    row_wait: float = 0.0  # the host's check per row (its tokens walked, counted, looked up)

    def of(self, rows: int, drafts: int) -> float:
        """A step of ``rows`` rows verifying up to ``drafts`` drafts each, in plain steps."""
        if not drafts:
            return 1.0
        return 1.0 + self.wait + self.row_wait * rows + self.position * math.sqrt(rows) * drafts


def expected(rate: float, n: int) -> float:
    """Accepted tokens expected from ``n`` drafts at per-token acceptance ``rate``: the j-th is
    accepted with probability about rate^j (all before it were)."""
    return float(n) if rate >= 1.0 else rate * (1 - rate**n) / (1 - rate)


def _gain(lengths: list[int], rates: list[float], most: int) -> float:
    """The log of the rows' speed-ups before the step's cost: Σ log(1 + expected), each row
    verifying ``min(its drafts, most)``."""
    return sum(math.log1p(expected(r, min(n, most))) for n, r in zip(lengths, rates, strict=True) if n)


def plan(lengths: list[int], rates: list[float], cost: StepCost) -> list[int]:
    """How many drafts each row verifies this step, from the drafts it has (``lengths``) and
    its recent acceptance (``rates``): the step's width (1 + its most drafts) that makes the
    rows fastest together, or none (a plain step).

    Each row decodes ``1 + expected`` tokens in a step that takes ``cost.of(rows, d)`` plain
    steps' time; the width chosen maximises the product of the rows' speed-ups (the sum of
    their logs), and drafts happen only when that product is above 1. Not the batch's total
    tokens: a step where two rows accept many drafts while six wait for them has more
    tokens, but six streams slower, and a stream's wall time is what its user waits for."""
    most = max(lengths, default=0)
    best, width = 0.0, 0
    for d in range(1, most + 1):
        score = _gain(lengths, rates, d) - len(lengths) * math.log(cost.of(len(lengths), d))
        if score > best:
            best, width = score, d
    return [min(n, width) for n in lengths]


def may_pay(caps: list[int], rates: list[float], cost: StepCost) -> bool:
    """Whether any drafts could pass ``plan``: its score if every row had all ``caps`` drafts
    and paid only the narrowest step's cost. A bound from the rates alone, so a busy batch of
    prose skips looking drafts up for its rows at every step."""
    return _gain(caps, rates, max(caps, default=0)) > len(caps) * math.log(cost.of(len(caps), 1))


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
