"""The benchmark's output: the JSON document (with the command line and the machine it ran on)
and the human tables printed by default, plus ratios between the targets of one run."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
from importlib import metadata
from typing import Any

import orjson

# metric -> how to read it; ratios are always first target ÷ other target
RATIO_METRICS = ("decode_tps_median", "aggregate_tps", "ttft_p50_ms", "itl_p50_ms")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """Where the numbers come from (MLX versions read from package metadata: no MLX import)."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "mlx": _version("mlx"),
        "mlx_lm": _version("mlx-lm"),
        "hearth": _version("mlx-hearth"),
    }


def document(argv: list[str], plan: dict[str, Any], targets: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "command": ["hearth", "bench", *argv],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "plan": plan,
        "targets": targets,
        "comparisons": comparisons(targets),
    }


def _flat(step: dict[str, Any]) -> dict[str, float | None]:
    return {
        "decode_tps_median": step.get("decode_tps_median"),
        "aggregate_tps": step.get("aggregate_tps"),
        "ttft_p50_ms": (step.get("ttft_ms") or {}).get("p50"),
        "itl_p50_ms": (step.get("itl_ms") or {}).get("p50"),
        "cold_warm_ratio": step.get("cold_warm_ratio"),
    }


def comparisons(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every other target, each step both ran: first target's metric ÷ the other's."""
    if len(targets) < 2:
        return []
    first = {(s["scenario"], s["clients"]): _flat(s) for s in targets[0]["scenarios"]}
    first_rounds = {(s["scenario"], s["clients"]): s.get("rounds") for s in targets[0]["scenarios"]}
    out = []
    for other in targets[1:]:
        for step in other["scenarios"]:
            mine = first.get((step["scenario"], step["clients"]))
            if mine is None:
                continue
            theirs = _flat(step)
            row: dict[str, Any] = {"of": targets[0]["name"], "to": other["name"]}
            row |= {"scenario": step["scenario"], "clients": step["clients"]}
            for k, v in theirs.items():
                mk = mine[k]
                if v and mk is not None:
                    row[f"{k}_ratio"] = mk / v
            row |= _round_ratios(first_rounds.get((step["scenario"], step["clients"])), step.get("rounds"))
            out.append(row)
    return out


def _round_ratios(mine: list[dict[str, Any]] | None, theirs: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Round i of the first target ÷ round i of the other (run seconds apart: gateway.bench.turns),
    for each ratio metric, and the median of those."""
    if not mine or not theirs or len(mine) != len(theirs):
        return {}
    out: dict[str, Any] = {}
    for k in RATIO_METRICS:
        ratios = [a[k] / b[k] for a, b in zip(mine, theirs) if a[k] is not None and b[k]]
        if len(ratios) == len(mine):
            out[f"{k}_ratio_rounds"] = ratios
            out[f"{k}_ratio_median"] = statistics.median(ratios)
    return out


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def text(doc: dict[str, Any]) -> str:
    """The human report: one load table, one prefix table, the ratios, and the run's context."""
    load, prefix = [], []
    for t in doc["targets"]:
        for s in t["scenarios"]:
            health = s.get("health_ms") or {}
            errors = str(s["errors"]["count"])
            if s["scenario"] == "prefix":
                warm = s["warm_ttft_ms"]
                row = [t["name"], str(s["prompt_tokens_cold"] or "-"), _f(s["cold_ttft_ms"], 0), _f(warm["p50"], 0)]
                prefix.append(row + [_f(s["cold_warm_ratio"]), _f(health.get("p99")), errors])
                continue
            load.append(
                [t["name"], s["scenario"], str(s["clients"]), str(s["requests"])]
                + [_f(s["ttft_ms"]["p50"], 0), _f(s["ttft_ms"]["p99"], 0)]
                + [_f(s["itl_ms"]["p50"]), _f(s["itl_ms"]["p99"])]
                + [_f(s["decode_tps_median"]), _f(s["aggregate_tps"]), _f(s.get("acceptance"), 2)]
                + [_f(health.get("p50")), _f(health.get("p99")), errors]
            )
    parts = []
    if load:
        headers = ["target", "scenario", "clients", "reqs", "TTFT p50", "p99", "ITL p50", "p99"]
        headers += ["decode tok/s", "agg tok/s", "accept", "/health p50", "p99", "errors"]
        note = "decode tok/s: median per request; accept: speculative drafts accepted ÷ drafted"
        parts.append(f"Load (times in ms; {note})\n" + _table(headers, load))
    if prefix:
        headers = ["target", "prompt tokens", "cold TTFT", "warm TTFT p50", "cold/warm", "/health p99", "errors"]
        parts.append("Shared prefix (times in ms)\n" + _table(headers, prefix))
    if doc["comparisons"]:
        rows = [
            [c["of"], c["to"], c["scenario"], str(c["clients"])]
            + [_f(c.get(f"{k}_ratio"), 2) for k in (*RATIO_METRICS, "cold_warm_ratio")]
            for c in doc["comparisons"]
        ]
        headers = ["first", "÷ other", "scenario", "clients", "decode", "agg", "TTFT", "ITL", "cold/warm"]
        note = "tok/s above 1 and times below 1: the first target is faster"
        parts.append(f"Ratios (first target ÷ other; {note})\n" + _table(headers, rows))
        paired = [c for c in doc["comparisons"] if "aggregate_tps_ratio_rounds" in c]
        if paired:
            rows = [
                [c["of"], c["to"], c["scenario"], str(c["clients"])]
                + [" ".join(_f(r, 2) for r in c[f"{k}_ratio_rounds"]) + f" ({_f(c[f'{k}_ratio_median'], 2)})"
                   for k in ("aggregate_tps", "ttft_p50_ms")]
                for c in paired
            ]  # fmt: skip
            headers = ["first", "÷ other", "scenario", "clients", "agg by round (median)", "TTFT p50 by round (median)"]
            parts.append("Ratios round by round (the targets took turns)\n" + _table(headers, rows))
    for t in doc["targets"]:
        ratios = next((s["structured"] for s in t["scenarios"] if "structured" in s), None)
        if ratios:
            parts.append(
                f"Structured output ({t['name']}): constrained ÷ free decode tok/s, one stream: "
                f"{_f(ratios['constrained_decode_ratio'], 2)}; 7 free + 1 constrained ÷ 8 free aggregate tok/s: "
                f"{_f(ratios['mixed_aggregate_ratio'], 2)}"
            )
    for t in doc["targets"]:
        spec = next((s["speculation"] for s in t["scenarios"] if "speculation" in s), None)
        if spec:
            accept = {(s["scenario"], s["clients"]): s.get("acceptance") for s in t["scenarios"]}
            parts.append(
                f"Speculative decoding ({t['name']}), with ÷ without: edit one stream {_f(spec['edit_single'], 2)}, "
                f"edit x8 aggregate {_f(spec['edit_concurrent'], 2)}; prose one stream {_f(spec['prose_single'], 2)}, "
                f"prose x8 aggregate {_f(spec['prose_concurrent'], 2)}. Acceptance: edit "
                f"{_f(accept.get(('edit', 1)), 2)} (x8 {_f(accept.get(('edit', 8)), 2)}), prose "
                f"{_f(accept.get(('prose', 1)), 2)} (x8 {_f(accept.get(('prose', 8)), 2)})"
            )
    for t in doc["targets"]:
        for s in t["scenarios"]:
            if s["errors"]["first"]:
                parts.append(f"{t['name']} {s['scenario']}: first error: {s['errors']['first']}")
    m = doc["machine"]
    parts.append(
        f"{doc['date']}  {m['platform']}, {m['cpu_count']} CPUs, mlx {m['mlx']}, mlx-lm {m['mlx_lm']}"
        f"  max_tokens={doc['plan']['max_tokens']} seed={doc['plan']['seed']}"
    )
    return "\n\n".join(parts) + "\n"


def write(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        sys.stdout.write(text(doc))
    sys.stdout.flush()
