"""The bench's targets take turns: every target runs a step before the next step starts, the
order reversed every other round, the warm round untimed, and each load step's summary pools the
timed rounds and keeps each round's figures."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.bench import report, turns
from gateway.bench.progress import Progress
from gateway.bench.scenarios import WARM, Plan, Round
from gateway.bench.stats import RequestResult


class Recorder:
    """A target that answers every request with ``tokens`` tokens over one second per round,
    and notes what it was asked to run."""

    def __init__(self, name: str, log: list[tuple[str, str, int, int]], tokens: int) -> None:
        self.name, self.log, self.tokens = name, log, tokens

    async def start(self, plan: Plan, progress: Progress) -> None:
        pass

    async def load(self, plan: Plan, scenario: str, n: int, rnd: int, progress: Progress) -> Round:
        self.log.append((self.name, scenario, n, rnd))
        base = 10.0 * len(self.log)
        res = [
            RequestResult(start=base, end=base + 1.0, chunks=[(base + 0.1 * (1 + k), 1) for k in range(self.tokens)])
            for _ in range(n)
        ]
        return Round(res, 1.0)

    async def server_steps(self, plan: Plan, scenario: str, progress: Progress) -> list[dict[str, Any]]:
        self.log.append((self.name, scenario, 1, 0))
        return []

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    async def aclose(self) -> None:
        pass


def test_targets_take_turns_step_by_step_reversed_every_other_round() -> None:
    log: list[tuple[str, str, int, int]] = []
    plan = Plan(scenarios=("concurrent", "prefix"), clients=(2, 4), rounds=2, warm_round=True)
    runners: list[turns.Runner] = [Recorder("a", log, 4), Recorder("b", log, 2)]
    targets = asyncio.run(turns.run(runners, plan, Progress(quiet=True)))
    assert log == [
        ("a", "concurrent", 2, WARM), ("b", "concurrent", 2, WARM),
        ("b", "concurrent", 2, 0), ("a", "concurrent", 2, 0),
        ("a", "concurrent", 2, 1), ("b", "concurrent", 2, 1),
        ("a", "concurrent", 4, WARM), ("b", "concurrent", 4, WARM),
        ("b", "concurrent", 4, 0), ("a", "concurrent", 4, 0),
        ("a", "concurrent", 4, 1), ("b", "concurrent", 4, 1),
        ("a", "prefix", 1, 0), ("b", "prefix", 1, 0),
    ]  # fmt: skip
    a, b = targets
    step = a["scenarios"][0]
    assert (step["clients"], step["requests"], step["completion_tokens"]) == (2, 4, 16)  # the warm round left out
    assert step["wall_s"] == 2.0 and step["aggregate_tps"] == 8.0
    assert [r["aggregate_tps"] for r in step["rounds"]] == [8.0, 8.0]
    (x2, x4) = report.comparisons(targets)
    assert x2["aggregate_tps_ratio"] == 2.0 and x2["aggregate_tps_ratio_rounds"] == [2.0, 2.0]
    assert x4["aggregate_tps_ratio_median"] == 2.0


def test_one_round_keeps_the_report_as_it_was() -> None:
    log: list[tuple[str, str, int, int]] = []
    plan = Plan(scenarios=("single",), clients=(1,))
    targets = asyncio.run(turns.run([Recorder("a", log, 3), Recorder("b", log, 3)], plan, Progress(quiet=True)))
    assert log == [("a", "single", 1, 0), ("b", "single", 1, 0)]
    assert "rounds" not in targets[0]["scenarios"][0]
    (ratio,) = report.comparisons(targets)
    assert ratio["aggregate_tps_ratio"] == 1.0 and "aggregate_tps_ratio_rounds" not in ratio
