"""Resuming a generation whose worker died mid-stream: what the gateway keeps, whom it blames.

The session forwards a generation's deltas to the client and notes, per generation, what it
forwarded (``Progress``): the token ids every delta carries (``Delta.token_ids``, those whose
text the worker still holds back included), the characters of text and reasoning, the tool calls. When
the worker dies, the generation goes to another worker with ``params["resume"]`` (``Progress.
resume``): the worker forces those tokens after the prompt and sends only what the client does
not have yet (worker/resume.py). The client sees one stream.

Poison requests. A request that kills every worker it runs on must not be resumed forever, but
the other requests that shared its dying worker are not at fault and must complete. So a death
is *charged* (``died``):

- to every request the worker held, when none of them was charged before (nobody is known);
- only to the one suspect present, when exactly one of them was charged before (or one of them
  was running on probation, see below): the others are bystanders and are not charged;
- to nobody, when several suspects were present: each of them then runs *on probation*, one
  at a time per model (``Progress.isolate``: the session's probation slot), so the next death
  names the culprit.

``fate`` decides what happens to a generation after a death: run it again (re-dispatched from
the start if nothing reached the client, resumed otherwise), or fail it: ``poison_request`` once
it has been charged with more deaths than ``resume_attempts`` allows and at least two of them
(it was the only suspect at a death), ``worker_died`` when resuming is off (``resume_attempts =
0``) or the backstop (``BYSTANDER_DEATHS`` more deaths than allowed, charged or not) is reached.
A generation that never reached the client is re-dispatched once even with ``resume_attempts =
0``, as before resumes existed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from shared.protocol import Delta

BYSTANDER_DEATHS = 4  # deaths not charged to a request that it may see beyond its own allowance


@dataclass
class Progress:
    """One generation's output as the session forwarded it, and its worker deaths."""

    tokens: list[int] = field(default_factory=list)
    text: int = 0  # characters of text forwarded
    reasoning: int = 0  # characters of reasoning forwarded
    tool_calls: int = 0
    complete: bool = True  # every delta said its token ids (a resume needs them all)
    resumes: int = 0  # times it was resumed
    deaths: int = 0  # worker deaths it was present at
    charged: int = 0  # deaths charged to it
    isolate: bool = False  # it runs on probation: one such generation per model at a time
    on_probation: bool = False  # it holds its model's probation slot now

    def forwarded(self, delta: Delta) -> None:
        self.text += len(delta.text)
        self.reasoning += len(delta.reasoning)
        self.tool_calls += len(delta.tool_calls or [])
        if delta.token_ids is None:
            self.complete = False
        else:
            self.tokens.extend(delta.token_ids)

    @property
    def started(self) -> bool:
        """Something reached the client (so the generation must be resumed, not restarted)."""
        return bool(self.tokens or self.text or self.reasoning or self.tool_calls)

    def resume(self) -> dict[str, Any]:
        """``Generate.params["resume"]``: what the next worker forces and what it must not resend."""
        return {
            "tokens": list(self.tokens),
            "text": self.text,
            "tool_calls": self.tool_calls,
            "reasoning": self.reasoning,
        }


def died(held: Sequence[Progress]) -> None:
    """A worker died holding these generations: count the death, and charge it (module doc)."""
    for p in held:
        p.deaths += 1
    probation = [p for p in held if p.on_probation]
    suspects = probation or [p for p in held if p.charged]
    if not suspects:
        for p in held:
            p.charged += 1
    elif len(suspects) == 1:
        suspects[0].charged += 1
    else:
        for p in suspects:
            p.isolate = True


class Fate(Enum):
    RUN_AGAIN = "run again"
    WORKER_DIED = "worker_died"
    POISON = "poison_request"


def fate(p: Progress, attempts: int) -> Fate:
    """What becomes of generation ``p`` after a death (``died`` already counted it), with
    ``resume_attempts = attempts``."""
    started = p.started
    if started and (attempts == 0 or not p.complete):
        return Fate.WORKER_DIED
    allowed = attempts if started else max(1, attempts)
    if p.charged > allowed:
        return Fate.POISON if p.charged >= 2 else Fate.WORKER_DIED
    if p.deaths > allowed + BYSTANDER_DEATHS:
        return Fate.WORKER_DIED
    return Fate.RUN_AGAIN
