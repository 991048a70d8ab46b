"""When a sequence drafts, and how many tokens: the gate that keeps speculation from losing.

A draft costs the target model extra positions in its forward pass. On a GPU they are nearly
free; on a CPU a step of 8 sequences with 8 positions each costs about 3x a plain step. So the
batch has a budget of positions per step (``speculative_budget``) shared by its rows, and each
sequence drafts only while its drafts are accepted often enough to pay: a sequence whose
acceptance falls below ``MIN_ACCEPTANCE`` stops drafting for a while and tries again later, for
longer each time it fails, so prose (which rarely repeats its context) decodes as it would
without speculation while a file being rewritten drafts on every step.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_ACCEPTANCE = 0.3  # accepted ÷ drafted below this (on average) pauses a sequence's drafting
_EMA = 0.5  # weight of the newest step in the acceptance average
_FIRST_PAUSE, _LONGEST_PAUSE = 4, 256  # steps without drafting after a miss, doubled per miss


@dataclass
class Gate:
    """One sequence's drafting state: its recent acceptance and how long it is paused."""

    rate: float = 1.0  # an optimist at first: every sequence gets to try
    paused: int = 0  # steps left without drafting
    pause: int = _FIRST_PAUSE  # the next pause's length
    length: int = 4  # drafts to ask for next: grows while all are accepted, else what was

    @property
    def open(self) -> bool:
        """Whether the sequence drafts now."""
        return self.paused == 0

    def tick(self) -> None:
        """A step went by (a paused sequence counts it)."""
        if self.paused > 0:
            self.paused -= 1

    def record(self, drafted: int, accepted: int) -> None:
        """A verified step: ``accepted`` of its ``drafted`` tokens were right."""
        if drafted <= 0:
            return
        self.length = drafted * 2 if accepted == drafted else max(1, accepted + 1)
        self.rate = (1 - _EMA) * self.rate + _EMA * (accepted / drafted)
        if self.rate < MIN_ACCEPTANCE:
            self.paused, self.pause = self.pause, min(self.pause * 2, _LONGEST_PAUSE)
            self.rate = MIN_ACCEPTANCE + 0.2  # after the pause it gets a fair new try
        elif accepted == drafted:
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


def plan(lengths: list[int], rates: list[float], cost: StepCost) -> list[int]:
    """How many drafts each row verifies this step, from the drafts it has (``lengths``) and
    its recent acceptance (``rates``): none for a row whose drafts can't pay for their
    positions, and none at all when the batch's expected accepted drafts don't pay for the step
    it makes everyone wait for. A step with drafts gives B + Σ accepted tokens for 1 + wait +
    position·Σ drafts / B plain steps' time, so it pays when Σ rate·drafts > wait·B + position·Σ drafts."""
    keep = [n if n > 0 and rate > cost.position else 0 for n, rate in zip(lengths, rates, strict=True)]
    gain = sum(rate * n for n, rate in zip(keep, rates, strict=True))
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
