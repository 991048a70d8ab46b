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
from dataclasses import dataclass
from typing import Any

from gateway.bench import prompts
from gateway.bench.progress import Progress
from gateway.bench.stats import RequestResult, summarize, summarize_prefix
from gateway.bench.streaming import Target, probe_health
from gateway.bench.edit import run_edit
from gateway.bench.structured import run_structured

SCENARIOS = ("single", "concurrent", "prefix")  # "all"
EXTRA_SCENARIOS = ("structured", "edit")  # run only when named
PREFIX_MAX_TOKENS = 16  # the prefix scenario measures time to first token: a few tokens suffice


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

    def messages(self, scenario: str, clients: int, client: int, index: int) -> prompts.Messages:
        return prompts.chat(self.seed, scenario, clients, client, index, tokens=self.prompt_tokens)

    def more(self, index: int, started: float, now: float) -> bool:
        """Whether a client that has sent ``index`` requests sends another."""
        if self.duration is not None:
            return now - started < self.duration
        return index < self.requests_per_client

    def expected(self, clients: int) -> int:
        """Requests a step will make (0 when bounded by duration: not known in advance)."""
        return 0 if self.duration is not None else clients * self.requests_per_client


async def _load(target: Target, plan: Plan, scenario: str, n: int, progress: Progress) -> list[RequestResult]:
    started = time.perf_counter()

    async def client(c: int) -> list[RequestResult]:
        out: list[RequestResult] = []
        while plan.more(len(out), started, time.perf_counter()):
            res = await target.chat(plan.messages(scenario, n, c, len(out)), plan.max_tokens)
            progress.add(res)
            out.append(res)
        return out

    per_client = await asyncio.gather(*(client(c) for c in range(n)))
    return [r for rs in per_client for r in rs]


async def _prefix(target: Target, plan: Plan, progress: Progress) -> tuple[RequestResult, list[RequestResult]]:
    chats = prompts.prefix_chats(plan.seed, plan.prefix_tokens, plan.salt, 1 + plan.warm_turns)
    results = []
    for messages in chats:  # one after another: each warm turn finds the prefix cached
        res = await target.chat(messages, min(plan.max_tokens, PREFIX_MAX_TOKENS))
        progress.add(res)
        results.append(res)
    return results[0], results[1:]


async def run_step(target: Target, plan: Plan, scenario: str, n: int, progress: Progress) -> dict[str, Any]:
    """Run one step with /health probed alongside; return its summary."""
    stop, health, health_errors = asyncio.Event(), list[float](), list[str]()
    probe = asyncio.create_task(probe_health(target, stop, health, health_errors))
    try:
        if scenario == "prefix":
            cold, warm = await _prefix(target, plan, progress)
            summary = summarize_prefix(cold, warm, health)
        else:
            t0 = time.perf_counter()
            results = await _load(target, plan, scenario, n, progress)
            wall = max((r.end for r in results), default=t0) - min((r.start for r in results), default=t0)
            summary = summarize(scenario, n, results, wall, health)
    finally:
        stop.set()
        await probe
    summary["health_ms"]["errors"] = len(health_errors)
    summary["health_ms"]["first_error"] = health_errors[0] if health_errors else None
    return summary


async def run_target(target: Target, plan: Plan, name: str, progress: Progress) -> list[dict[str, Any]]:
    """Every step of ``plan`` against ``target``, after one short warm-up request."""
    progress.start(f"{name} warm-up", 1)
    warm = await target.chat(prompts.chat(plan.seed, "warmup", tokens=24), 8)
    progress.add(warm)
    progress.finish()
    if not warm.ok:
        raise RuntimeError(f"{name} ({target.url}) failed its warm-up request: {warm.error}")
    out = []
    for scenario, n in plan.steps():
        if scenario == "structured":
            out += await run_structured(target, plan.max_tokens, max(plan.requests_per_client, 1), progress)
            continue
        if scenario == "edit":
            out += await run_edit(target, plan.seed, max(plan.requests_per_client, 1), progress)
            continue
        total = 1 + plan.warm_turns if scenario == "prefix" else plan.expected(n)
        progress.start(f"{name} {scenario}" + (f" x{n}" if scenario == "concurrent" else ""), total)
        out.append(await run_step(target, plan, scenario, n, progress))
        progress.finish()
    return out
