"""The benchmark's scenarios, run against one OpenAI-compatible server.

- ``single``: one client streaming its requests one after another (decode speed of one stream).
- ``concurrent``: N clients at once, for each level of ``--clients`` (what batching buys).
- ``prefix``: chats sharing one long system prompt: the first is cold (its prompt was never
  seen: a per-run salt leads it), the next ones warm (a prefix cache should skip the shared part).
- ``structured`` (only when asked for): constrained decoding's cost, see ``gateway.bench.structured``.
- ``edit`` (only when asked for): speculative decoding on an agent's file edit and on prose, see
  ``gateway.bench.edit``.

Every scenario reports the speculative acceptance the server sent in its usage (accepted ÷
drafted tokens, OpenAI's predicted-output fields), when it sent any.

Each client is a closed loop: it sends its next request when the previous one has finished,
``requests_per_client`` times or until ``duration`` seconds have passed. /health is probed
every 50 ms while a scenario runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.bench import prompts
from gateway.bench.progress import Progress
from gateway.bench.stats import RequestResult, summarize, summarize_prefix
from gateway.bench.streaming import Target, probe_health
from gateway.bench.edit import run_edit
from gateway.bench.structured import run_structured

SCENARIOS = ("single", "concurrent", "prefix")  # "all"
EXTRA_SCENARIOS = ("structured", "edit")  # run only when named
T = TypeVar("T")
PREFIX_MAX_TOKENS = 16  # the prefix scenario measures time to first token: a few tokens suffice
LOAD_SCENARIOS = ("single", "concurrent")  # the steps every target runs, in rounds when asked
WARM = -1  # the untimed round's number


@dataclass(frozen=True)
class Plan:
    """Everything that decides what is sent; the same plan sends the same prompts everywhere."""

    scenarios: tuple[str, ...] = SCENARIOS
    clients: tuple[int, ...] = (1, 2, 4, 8)
    max_tokens: int = 128
    requests_per_client: int = 1
    duration: float | None = None  # seconds per step; overrides requests_per_client
    seed: int = 0
    prompt_tokens: int = 64  # user turns (approximate: see prompts.WORDS_PER_TOKEN)
    prefix_tokens: int = 1500  # the shared system prompt of the prefix scenario (approximate)
    warm_turns: int = 4  # warm requests after the cold one
    salt: str = ""  # leads the prefix scenario's system prompt: new every run
    rounds: int = 1  # timed rounds of each single/concurrent step, the targets taking turns (gateway.bench.turns)
    warm_round: bool = False  # one untimed round of each of those steps on every target first

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(**{**data, "scenarios": tuple(data["scenarios"]), "clients": tuple(data["clients"])})

    def steps(self) -> list[tuple[str, int]]:
        """(scenario, clients) in the order they run; ``prefix`` is one step with one client."""
        out: list[tuple[str, int]] = []
        for s in self.scenarios:
            out += [(s, n) for n in self.clients] if s == "concurrent" else [(s, 1)]
        return out

    def messages(self, scenario: str, clients: int, client: int, index: int, rnd: int = 0) -> prompts.Messages:
        """Round 0 (and a plan of one round) keeps the prompts it always had; every later round,
        and the untimed warm round (``WARM``), gets new ones, so no target's prompt cache sees a
        prompt twice."""
        where: tuple[object, ...] = (scenario, clients, client, index)
        if rnd:
            where += ("warm" if rnd == WARM else f"round{rnd}",)
        return prompts.chat(self.seed, *where, tokens=self.prompt_tokens)

    def more(self, index: int, started: float, now: float) -> bool:
        """Whether a client that has sent ``index`` requests sends another."""
        if self.duration is not None:
            return now - started < self.duration
        return index < self.requests_per_client

    def expected(self, clients: int) -> int:
        """Requests a step will make (0 when bounded by duration: not known in advance)."""
        return 0 if self.duration is not None else clients * self.requests_per_client


@dataclass
class Round:
    """One round of a load step on one target: its requests, from the first start to the last
    end, and the /health round trips measured meanwhile (None: not probed, as in-process)."""

    results: list[RequestResult]
    wall: float
    health: list[float] | None = None
    health_errors: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def of(cls, results: list[RequestResult], t0: float, **health: Any) -> Round:
        wall = max((r.end for r in results), default=t0) - min((r.start for r in results), default=t0)
        return cls(results, wall, **health)


def pooled(scenario: str, clients: int, rounds: list[Round]) -> dict[str, Any]:
    """One step's summary over all its timed rounds (requests pooled, walls added up); with more
    than one round, each round's own figures too, so ratios can be paired round by round."""
    health = None if rounds[0].health is None else [h for r in rounds for h in r.health or []]
    summary = summarize(scenario, clients, [x for r in rounds for x in r.results], sum(r.wall for r in rounds), health)
    if health is not None:
        errors = [e for r in rounds for e in r.health_errors]
        summary["health_ms"] |= {"errors": len(errors), "first_error": errors[0] if errors else None}
    if len(rounds) > 1:
        summary["rounds"] = [_round_figures(summarize(scenario, clients, r.results, r.wall, None)) for r in rounds]
    return summary


def _round_figures(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "wall_s": s["wall_s"],
        "aggregate_tps": s["aggregate_tps"],
        "decode_tps_median": s["decode_tps_median"],
        "ttft_p50_ms": s["ttft_ms"]["p50"],
        "itl_p50_ms": s["itl_ms"]["p50"],
    }


async def _probed(target: Target, work: Coroutine[Any, Any, T]) -> tuple[T, list[float], list[str]]:
    """Run ``work`` with /health probed every 50 ms alongside."""
    stop, health, errors = asyncio.Event(), list[float](), list[str]()
    probe = asyncio.create_task(probe_health(target, stop, health, errors))
    try:
        out = await work
    finally:
        stop.set()
        await probe
    return out, health, errors


async def load_round(target: Target, plan: Plan, scenario: str, n: int, rnd: int, progress: Progress) -> Round:
    """One round of ``single`` or ``concurrent`` at ``n`` clients, each a closed loop."""
    started = time.perf_counter()

    async def client(c: int) -> list[RequestResult]:
        out: list[RequestResult] = []
        while plan.more(len(out), started, time.perf_counter()):
            res = await target.chat(plan.messages(scenario, n, c, len(out), rnd), plan.max_tokens)
            progress.add(res)
            out.append(res)
        return out

    async def clients() -> list[RequestResult]:
        per_client = await asyncio.gather(*(client(c) for c in range(n)))
        return [r for rs in per_client for r in rs]

    results, health, errors = await _probed(target, clients())
    return Round.of(results, started, health=health, health_errors=errors)


async def _prefix(target: Target, plan: Plan, progress: Progress) -> tuple[RequestResult, list[RequestResult]]:
    chats = prompts.prefix_chats(plan.seed, plan.prefix_tokens, plan.salt, 1 + plan.warm_turns)
    results = []
    for messages in chats:  # one after another: each warm turn finds the prefix cached
        res = await target.chat(messages, min(plan.max_tokens, PREFIX_MAX_TOKENS))
        progress.add(res)
        results.append(res)
    return results[0], results[1:]


async def server_steps(
    target: Target, plan: Plan, scenario: str, name: str, progress: Progress
) -> list[dict[str, Any]]:
    """The scenarios only a server runs (prefix, structured, edit), once each: their summaries."""
    if scenario == "structured":
        return await run_structured(target, plan.max_tokens, max(plan.requests_per_client, 1), progress)
    if scenario == "edit":
        return await run_edit(target, plan.seed, max(plan.requests_per_client, 1), progress)
    progress.start(f"{name} prefix", 1 + plan.warm_turns)
    (cold, warm), health, errors = await _probed(target, _prefix(target, plan, progress))
    progress.finish()
    summary = summarize_prefix(cold, warm, health)
    summary["health_ms"] |= {"errors": len(errors), "first_error": errors[0] if errors else None}
    return [summary]


async def warm_up(target: Target, plan: Plan, name: str, progress: Progress) -> None:
    """One short request before anything is timed: a server that can't answer fails here."""
    progress.start(f"{name} warm-up", 1)
    warm = await target.chat(prompts.chat(plan.seed, "warmup", tokens=24), 8)
    progress.add(warm)
    progress.finish()
    if not warm.ok:
        raise RuntimeError(f"{name} ({target.url}) failed its warm-up request: {warm.error}")
