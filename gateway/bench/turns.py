"""The targets of one ``hearth bench`` run take turns, step by step and round by round.

Every target (the server at ``--url``, the one at ``--compare``, the in-process ``--raw``
reference) runs a step before the next step starts. With ``--rounds R`` each load step (single,
concurrent) runs R times on every target, the order of the targets reversed every other round
(A B, B A, A B, ...). Why: on a shared machine the speed drifts over minutes (on the H200 the
in-process reference's rate at 8 clients moved 481-761 tok/s between runs minutes apart, more than
the 5% a ratio is asked to show), so a target that ran all its steps first and another that ran
them last were measured on different machines. Taking turns spreads the drift over both, and
each round's ratio compares runs seconds apart; the report keeps every round's figures beside
the pooled ones.

``--warm-round`` adds one untimed round of each load step on every target first: a fresh
process's first use of a batch shape compiles kernels (12 s on the H200), which Hearth's worker
pays at load (its warm-up) but the in-process reference and other servers would pay inside their
first timed round.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.bench.progress import Progress
from gateway.bench.scenarios import LOAD_SCENARIOS, WARM, Plan, Round, load_round, pooled, server_steps, warm_up
from gateway.bench.streaming import Target


class Runner(Protocol):
    """One target of the run."""

    name: str

    async def start(self, plan: Plan, progress: Progress) -> None: ...

    async def load(self, plan: Plan, scenario: str, n: int, rnd: int, progress: Progress) -> Round: ...

    async def server_steps(self, plan: Plan, scenario: str, progress: Progress) -> list[dict[str, Any]]: ...

    def describe(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class HttpRunner:
    """A server over HTTP (OpenAI-compatible streaming chat completions)."""

    def __init__(self, name: str, url: str, model: str, api_key: str | None) -> None:
        self.name, self.model = name, model
        self.target = Target(url, model, api_key)

    async def start(self, plan: Plan, progress: Progress) -> None:
        await warm_up(self.target, plan, self.name, progress)

    async def load(self, plan: Plan, scenario: str, n: int, rnd: int, progress: Progress) -> Round:
        return await load_round(self.target, plan, scenario, n, rnd, progress)

    async def server_steps(self, plan: Plan, scenario: str, progress: Progress) -> list[dict[str, Any]]:
        return await server_steps(self.target, plan, scenario, self.name, progress)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "http", "url": self.target.url, "model": self.model}

    async def aclose(self) -> None:
        await self.target.aclose()


def _label(name: str, scenario: str, n: int, rnd: int, rounds: int) -> str:
    label = f"{name} {scenario}" + (f" x{n}" if scenario == "concurrent" else "")
    if rnd == WARM:
        return label + " (untimed warm round)"
    return label + (f" round {rnd + 1}/{rounds}" if rounds > 1 else "")


async def run(runners: list[Runner], plan: Plan, progress: Progress) -> list[dict[str, Any]]:
    """Every step of ``plan`` on every runner, taking turns: one report entry per runner."""
    steps: list[list[dict[str, Any]]] = [[] for _ in runners]
    for scenario, n in plan.steps():
        if scenario not in LOAD_SCENARIOS:
            for i, runner in enumerate(runners):
                steps[i] += await runner.server_steps(plan, scenario, progress)
            continue
        rounds: list[list[Round]] = [[] for _ in runners]
        for turn, rnd in enumerate(([WARM] if plan.warm_round else []) + list(range(plan.rounds))):
            order = list(enumerate(runners))
            for i, runner in order if turn % 2 == 0 else order[::-1]:
                progress.start(_label(runner.name, scenario, n, rnd, plan.rounds), plan.expected(n))
                got = await runner.load(plan, scenario, n, rnd, progress)
                progress.finish()
                if rnd != WARM:
                    rounds[i].append(got)
        for i in range(len(runners)):
            steps[i].append(pooled(scenario, n, rounds[i]))
    return [{**runner.describe(), "scenarios": s} for runner, s in zip(runners, steps)]
