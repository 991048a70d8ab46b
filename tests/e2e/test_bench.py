"""``hearth bench`` end to end: every scenario against a real gateway on the tiny model, a
second server to compare with, and the in-process ``--raw`` reference, all through the real
command line with ``--json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.servers import ROOT, Gateway, free_port


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "gateway", "bench", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def bench_json(*args: str) -> dict[str, Any]:
    out = bench(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def check_load_step(step: dict[str, Any], probed: bool = True) -> None:
    assert step["errors"] == {"count": 0, "first": None}
    assert step["requests"] >= step["clients"] and step["completion_tokens"] > 0
    assert step["prompt_tokens_mean"] > 0 and step["wall_s"] > 0
    for metric in ("ttft_ms", "itl_ms"):
        assert 0 < step[metric]["p50"] <= step[metric]["p99"], (metric, step)
    assert step["decode_tps_median"] > 0 and step["aggregate_tps"] > 0
    if probed:
        health = step["health_ms"]
        assert health["samples"] >= 1 and health["errors"] == 0
        assert 0 < health["p50"] <= health["p99"]
    else:
        assert step["health_ms"] is None


def test_all_scenarios_against_a_gateway(tiny_gateway: Gateway) -> None:
    doc = bench_json(
        "--url", tiny_gateway.url, "--model", "tiny", "--scenario", "all", "--clients", "1,2",
        "--max-tokens", "8", "--prefix-tokens", "200",
    )  # fmt: skip
    assert doc["command"][:2] == ["hearth", "bench"] and "--prefix-tokens" in doc["command"]
    machine = doc["machine"]
    assert machine["cpu_count"] >= 1 and machine["mlx"] and machine["mlx_lm"] and machine["platform"]
    assert doc["date"] and doc["plan"]["max_tokens"] == 8 and doc["comparisons"] == []
    (target,) = doc["targets"]
    steps = {(s["scenario"], s["clients"]): s for s in target["scenarios"]}
    assert set(steps) == {("single", 1), ("concurrent", 1), ("concurrent", 2), ("prefix", 1)}
    for key in (("single", 1), ("concurrent", 1), ("concurrent", 2)):
        check_load_step(steps[key])
        assert steps[key]["completion_tokens"] <= 8 * steps[key]["requests"]
    prefix = steps[("prefix", 1)]
    assert prefix["errors"]["count"] == 0 and prefix["requests"] == 5
    assert prefix["prompt_tokens_cold"] > 200  # ~200 tokens of system prompt (more with the tiny tokenizer)
    assert prefix["cold_ttft_ms"] > 0 and 0 < prefix["warm_ttft_ms"]["p50"] <= prefix["warm_ttft_ms"]["p99"]
    assert prefix["cold_warm_ratio"] > 0


def test_structured_scenario_measures_constrained_decoding_side_by_side(tiny_gateway: Gateway) -> None:
    doc = bench_json("--url", tiny_gateway.url, "--model", "tiny", "--scenario", "structured", "--max-tokens", "6",
                     "--requests-per-client", "2")  # fmt: skip
    (target,) = doc["targets"]
    steps = {(s["scenario"], s["clients"]): s for s in target["scenarios"]}
    assert set(steps) == {("json-free", 1), ("json-schema", 1), ("mixed-free", 8), ("mixed-one-json", 8)}
    for step in steps.values():
        check_load_step(step, probed=False)
        assert step["requests"] == 2 * step["clients"]
        ratios = step["structured"]
        assert ratios["constrained_decode_ratio"] > 0 and ratios["mixed_aggregate_ratio"] > 0
    out = bench("--url", tiny_gateway.url, "--model", "tiny", "--scenario", "structured", "--max-tokens", "3")
    assert out.returncode == 0, out.stderr
    assert "Structured output (server): constrained ÷ free decode tok/s, one stream:" in out.stdout


def test_compare_prints_ratios(tiny_gateway: Gateway) -> None:
    out = bench(
        "--url", tiny_gateway.url, "--model", "tiny", "--name", "a", "--scenario", "single", "--max-tokens", "4",
        "--compare", tiny_gateway.url, "--compare-name", "b",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Ratios (first target ÷ other;" in out.stdout and "single" in out.stdout
    assert "b: " not in out.stdout  # no errors were listed
    assert "single: 1/1 requests" in out.stderr  # progress went to stderr


def test_an_unreachable_server_is_a_clear_failure() -> None:
    out = bench("--url", f"http://127.0.0.1:{free_port()}", "--scenario", "single", "--max-tokens", "2")
    assert out.returncode == 1
    assert "failed its warm-up request" in out.stderr and "Connection refused" in out.stderr


def test_raw_reference_in_process(tiny_model: Path) -> None:
    args = ("--raw", "--model-path", str(tiny_model), "--scenario", "all", "--clients", "2", "--max-tokens", "4")
    doc = bench_json(*args)
    (target,) = doc["targets"]
    assert target["name"] == "raw" and target["model"] == str(tiny_model)
    steps = {(s["scenario"], s["clients"]): s for s in target["scenarios"]}
    assert set(steps) == {("single", 1), ("concurrent", 2)}  # no prefix scenario in-process
    for step in steps.values():
        check_load_step(step, probed=False)
        assert step["completion_tokens"] <= 4 * step["requests"]


def test_edit_scenario_compares_the_same_work_with_and_without_speculation(tiny_gateway: Gateway) -> None:
    doc = bench_json("--url", tiny_gateway.url, "--model", "tiny", "--scenario", "edit", "--requests-per-client", "1")
    (target,) = doc["targets"]
    steps = {(s["scenario"], s["clients"]): s for s in target["scenarios"]}
    kinds = ("edit", "edit-nospec", "prose", "prose-nospec")
    assert set(steps) == {(k, n) for k in kinds for n in (1, 8)}
    for (kind, n), step in steps.items():
        check_load_step(step, probed=False)
        assert step["requests"] == n
        if not kind.endswith("-nospec"):  # the same prompts, greedy: the same tokens either way
            assert step["completion_tokens"] == steps[(f"{kind}-nospec", n)]["completion_tokens"]
    ratios = steps[("edit", 1)]["speculation"]
    assert set(ratios) == {"edit_single", "edit_concurrent", "prose_single", "prose_concurrent"}
    assert all(v is not None and v > 0 for v in ratios.values())


def test_a_server_and_the_reference_take_turns_in_rounds(tiny_gateway: Gateway, tiny_model: Path) -> None:
    doc = bench_json(
        "--url", tiny_gateway.url, "--model", "tiny", "--raw", "--model-path", str(tiny_model),
        "--scenario", "concurrent", "--clients", "2", "--max-tokens", "4", "--rounds", "2", "--warm-round",
    )  # fmt: skip
    server, raw = doc["targets"]
    assert (server["name"], raw["name"]) == ("server", "raw") and doc["plan"]["rounds"] == 2
    for target, probed in ((server, True), (raw, False)):
        (step,) = target["scenarios"]
        check_load_step(step, probed=probed)
        assert step["requests"] == 4  # two timed rounds of two clients; the warm round is not counted
        rounds = step["rounds"]
        assert len(rounds) == 2 and all(r["aggregate_tps"] > 0 and r["ttft_p50_ms"] > 0 for r in rounds)
        assert abs(sum(r["wall_s"] for r in rounds) - step["wall_s"]) < 1e-9
    (ratio,) = doc["comparisons"]
    agg = ratio["aggregate_tps_ratio_rounds"]
    assert len(agg) == 2 and min(agg) <= ratio["aggregate_tps_ratio_median"] <= max(agg)
    assert (
        agg[0]
        == server["scenarios"][0]["rounds"][0]["aggregate_tps"] / raw["scenarios"][0]["rounds"][0]["aggregate_tps"]
    )
    out = bench("--url", tiny_gateway.url, "--model", "tiny", "--scenario", "single", "--max-tokens", "3",
                "--rounds", "2", "--compare", tiny_gateway.url)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Ratios round by round (the targets took turns)" in out.stdout
    assert "server single round 2/2" in out.stderr and "compare single round 1/2" in out.stderr
