"""The structured-output scenario: what constrained decoding costs, side by side in one run.

Two comparisons, each made of steps that run alternately (``rounds`` times, every other round in
reverse order: A B B A …) so a noisy machine and its drift hit both sides alike:

- ``json-free`` vs ``json-schema``: one stream, the same chat with and without a
  ``response_format`` JSON Schema; the ratio of their median decode tok/s is the constrained
  stream's speed (target: at least 0.85).
- ``mixed-free`` vs ``mixed-one-json``: eight streams at once, all free, then seven free and one
  constrained; the ratio of their aggregate tok/s is what one grammar costs the batch (target:
  at most 5% lost).

The schema asks for a long list (``minItems``), so the constrained answers run to
``max_tokens`` like the free ones and the steps compare like with like.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.bench.progress import Progress
from gateway.bench.stats import RequestResult, summarize
from gateway.bench.streaming import Target

SCHEMA = {
    "type": "object",
    "properties": {"fruits": {"type": "array", "items": {"type": "string"}, "minItems": 60}},
    "required": ["fruits"],
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "fruits", "schema": SCHEMA, "strict": True}}
MIXED = 8


def _messages(i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"List sixty fruits as a JSON object (list {i})."}]


async def _step(target: Target, n: int, constrained: set[int], max_tokens: int) -> tuple[list[RequestResult], float]:
    async def one(i: int) -> RequestResult:
        extra = {"response_format": FORMAT} if i in constrained else None
        return await target.chat(_messages(i), max_tokens, extra)

    t0 = time.perf_counter()
    results = list(await asyncio.gather(*(one(i) for i in range(n))))
    wall = max((r.end for r in results), default=t0) - min((r.start for r in results), default=t0)
    return results, wall


async def run_structured(target: Target, max_tokens: int, rounds: int, progress: Progress) -> list[dict[str, Any]]:
    """The four steps' summaries (results of every round pooled), then the two ratios."""
    kinds = {
        "json-free": (1, set[int]()),
        "json-schema": (1, {0}),
        "mixed-free": (MIXED, set[int]()),
        "mixed-one-json": (MIXED, {MIXED - 1}),
    }
    pooled: dict[str, tuple[list[RequestResult], float]] = {k: ([], 0.0) for k in kinds}
    progress.start("structured", rounds * sum(n for n, _ in kinds.values()))
    for r in range(rounds):
        order = list(kinds) if r % 2 == 0 else list(reversed(kinds))
        for name in order:
            n, constrained = kinds[name]
            results, wall = await _step(target, n, constrained, max_tokens)
            for res in results:
                progress.add(res)
            prev, prev_wall = pooled[name]
            pooled[name] = (prev + results, prev_wall + wall)
    progress.finish()
    out = [summarize(name, kinds[name][0], results, wall, None) for name, (results, wall) in pooled.items()]
    by = {s["scenario"]: s for s in out}
    single = _ratio(by["json-schema"]["decode_tps_median"], by["json-free"]["decode_tps_median"])
    mixed = _ratio(by["mixed-one-json"]["aggregate_tps"], by["mixed-free"]["aggregate_tps"])
    for s in out:
        s["structured"] = {"constrained_decode_ratio": single, "mixed_aggregate_ratio": mixed}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None
