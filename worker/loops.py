"""The loop guard: notice when a generation keeps repeating one verbatim cycle of tokens.

Small models fall into such loops ("I am sorry. I am sorry. I am sorry. ..."), and a
repetition penalty alone hurts code, which repeats legitimately. The guard is opt-in (per
model in the config, per request with ``loop_guard``) and only fires on a cycle repeated
``repeats`` times back to back that also spans at least ``min_span`` tokens, so a short
legitimate repeat (an indented block, a list of similar lines) goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoopGuard:
    repeats: int = 4
    max_cycle: int = 64
    min_span: int = 32

    @classmethod
    def from_param(cls, value: Any) -> LoopGuard | None:
        """``True`` -> defaults, an object -> its settings, ``False``/None -> off."""
        if value is True:
            return cls()
        if isinstance(value, dict):
            return cls(**{k: int(v) for k, v in value.items() if k in ("repeats", "max_cycle", "min_span")})
        return None

    def check(self, tokens: Sequence[int]) -> tuple[int, int] | None:
        """(cycle length, times repeated) when the tail of ``tokens`` is a loop, else None."""
        n = len(tokens)
        for k in range(1, min(self.max_cycle, n // self.repeats) + 1):
            need = max(self.repeats, -(-self.min_span // k))  # ceil(min_span / k)
            if need * k > n:
                continue
            cycle = tokens[n - k :]
            if all(tokens[n - (i + 1) * k : n - i * k] == cycle for i in range(1, need)):
                reps = need
                while (reps + 1) * k <= n and tokens[n - (reps + 1) * k : n - reps * k] == cycle:
                    reps += 1
                return k, reps
        return None
