"""The edit scenario: what speculative decoding buys an agent, and what it costs prose.

An agent's commonest request to a local model is "here is a file, give it back with this
change": most of the answer is already in the prompt, which is what prompt lookup drafts from.
The chat holds a ~400-token Python file and asks for the whole file back with one function
renamed; 256 new tokens, greedy. Each comparison runs the same requests with the server's
speculation and with ``"speculative": false`` (Hearth's per-request opt-out), alternately
(``rounds`` times, every other round reversed: A B B A …) so the machine's noise and drift hit
both sides alike:

- ``edit`` ÷ ``edit-nospec``, one stream and ``CONCURRENT`` streams (targets: 2.0x and 1.3x);
- ``prose`` ÷ ``prose-nospec``: the ``single`` scenario's chats, one stream and ``CONCURRENT``
  streams, which speculation must not slow down (target: at least 0.97x).

Against another server (``--compare``), ``edit`` is the same request: a server without
speculation ignores the unknown field, and the ratio of the two ``edit`` rows is Hearth with
speculation ÷ that server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.bench import prompts
from gateway.bench.progress import Progress
from gateway.bench.stats import RequestResult, summarize
from gateway.bench.streaming import Target

CONCURRENT = 8
EDIT_MAX_TOKENS = 256
PROSE_MAX_TOKENS = 128  # the single scenario's default
OFF = {"speculative": False}

SOURCE = '''"""A small inventory of parts, with prices and stock levels."""

from dataclasses import dataclass, field


@dataclass
class Part:
    name: str
    price: float
    stock: int = 0
    tags: list[str] = field(default_factory=list)

    def value(self) -> float:
        return self.price * self.stock


class Inventory:
    def __init__(self) -> None:
        self.parts: dict[str, Part] = {}

    def add(self, part: Part) -> None:
        if part.name in self.parts:
            raise ValueError(f"{part.name} is already in the inventory")
        self.parts[part.name] = part

    def remove(self, name: str) -> Part:
        return self.parts.pop(name)

    def restock(self, name: str, count: int) -> None:
        if count <= 0:
            raise ValueError("count must be positive")
        self.parts[name].stock += count

    def total_value(self) -> float:
        return sum(p.value() for p in self.parts.values())

    def tagged(self, tag: str) -> list[Part]:
        return [p for p in self.parts.values() if tag in p.tags]

    def cheapest(self) -> Part | None:
        if not self.parts:
            return None
        return min(self.parts.values(), key=lambda p: p.price)

    def report(self) -> str:
        lines = [f"{p.name}: {p.stock} at {p.price:.2f}" for p in self.parts.values()]
        lines.append(f"total: {self.total_value():.2f}")
        return "\\n".join(lines)
'''


def edit_messages(i: int) -> prompts.Messages:
    """Chat ``i`` of the scenario: the same file, numbered in a comment on its first line so no
    two prompts are identical (each prefills its own prompt; a prompt cache would otherwise hand
    later ones the answer's start). The number sits inside the file, not before it: SmolLM2-135M
    copies a comment like any other line, while a "Request N." in front of the file sent it
    into a short explanation for most N (71 tokens, 8 of them drafts accepted, against 256 tokens
    and 143-161 accepted with the comment; CPU, greedy, 2026-12-03)."""
    return [
        {"role": "system", "content": "You are a careful coding assistant. Answer with the complete file only."},
        {
            "role": "user",
            "content": f"Here is inventory.py:\n```python\n# request {i}\n{SOURCE}```\n"
            "Rename the method total_value to total_worth everywhere and give back the whole file.",
        },
    ]


async def _step(target: Target, kind: str, n: int, seed: int, round_: int) -> tuple[list[RequestResult], float]:
    """One step's requests. With and without speculation send the same prompts in a round
    (greedy speculation gives the same tokens, so both sides do the same work, where prompts of
    their own would give answers of other lengths); new prompts each round. The second side of
    a round finds the prompts in the prompt cache: the rounds' order alternates, so each side
    is second in every other round."""
    extra = OFF if kind.endswith("-nospec") else None

    async def one(c: int) -> RequestResult:
        if kind.startswith("edit"):
            return await target.chat(edit_messages(1000 * round_ + 100 * n + c), EDIT_MAX_TOKENS, extra)
        return await target.chat(prompts.chat(seed, "prose", n, c, round_), PROSE_MAX_TOKENS, extra)

    t0 = time.perf_counter()
    results = list(await asyncio.gather(*(one(c) for c in range(n))))
    wall = max((r.end for r in results), default=t0) - min((r.start for r in results), default=t0)
    return results, wall


async def run_edit(target: Target, seed: int, rounds: int, progress: Progress) -> list[dict[str, Any]]:
    """The eight steps' summaries (every round pooled), then the four ratios."""
    steps = [(base + suffix, n) for base in ("edit", "prose") for n in (1, CONCURRENT) for suffix in ("", "-nospec")]
    pooled: dict[tuple[str, int], tuple[list[RequestResult], float]] = {s: ([], 0.0) for s in steps}
    progress.start("edit", rounds * sum(n for _, n in steps))
    for r in range(rounds):
        for kind, n in steps if r % 2 == 0 else list(reversed(steps)):
            results, wall = await _step(target, kind, n, seed, r)
            for res in results:
                progress.add(res)
            prev, prev_wall = pooled[(kind, n)]
            pooled[(kind, n)] = (prev + results, prev_wall + wall)
    progress.finish()
    out = [summarize(kind, n, results, wall, None) for (kind, n), (results, wall) in pooled.items()]
    by = {(s["scenario"], s["clients"]): s for s in out}
    ratios = {
        "edit_single": _ratio(by[("edit", 1)]["decode_tps_median"], by[("edit-nospec", 1)]["decode_tps_median"]),
        "edit_concurrent": _ratio(
            by[("edit", CONCURRENT)]["aggregate_tps"], by[("edit-nospec", CONCURRENT)]["aggregate_tps"]
        ),
        "prose_single": _ratio(by[("prose", 1)]["decode_tps_median"], by[("prose-nospec", 1)]["decode_tps_median"]),
        "prose_concurrent": _ratio(
            by[("prose", CONCURRENT)]["aggregate_tps"], by[("prose-nospec", CONCURRENT)]["aggregate_tps"]
        ),
    }
    for s in out:
        s["speculation"] = ratios
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None
