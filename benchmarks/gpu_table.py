"""The table benchmarks/gpu.sh prints: per model and client count, aggregate tok/s and TTFT p50 of
Hearth, mlx_lm.server and in-process BatchGenerator, with Hearth's ratios to the other two. When the
run took turns in rounds (`hearth bench --rounds`), the in-process ratio is followed by each round's
own (Hearth's round i ÷ the reference's round i, seconds apart) and their median.

python benchmarks/gpu_table.py RESULT.json ...   (each one `hearth bench --json` document)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson


def rows(doc: dict[str, Any]) -> dict[int, dict[str, dict[str, Any]]]:
    """clients -> target name -> that step's summary."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for target in doc["targets"]:
        for step in target["scenarios"]:
            if step["scenario"] == "concurrent":
                out.setdefault(step["clients"], {})[target["name"]] = step
    return out


def by_round(doc: dict[str, Any], n: int, metric: str) -> str:
    """Hearth ÷ in-process round by round at ``n`` clients, with the median: '' for one round."""
    for c in doc["comparisons"]:
        if (c["of"], c["to"], c["scenario"], c["clients"]) == ("hearth", "raw", "concurrent", n):
            rounds = c.get(f"{metric}_ratio_rounds")
            if rounds:
                return f" [{' '.join(f'{r:.2f}' for r in rounds)}; median {c[f'{metric}_ratio_median']:.2f}]"
    return ""


def main(paths: list[str]) -> int:
    head = (
        "| model | clients | Hearth tok/s | mlx_lm.server or hearth-b | in-process | Hearth/in-process [by round] "
        "| Hearth/that | TTFT p50 ms Hearth / in-process [ratio by round] | errors H/M |"
    )
    print(head)
    print("|" + "---|" * 9)
    for path in paths:
        doc = orjson.loads(Path(path).read_bytes())
        for n, by in sorted(rows(doc).items()):
            h, r = by.get("hearth"), by.get("raw")
            m = next((s for name, s in by.items() if name not in ("hearth", "raw")), None)  # mlx_lm.server, hearth-b

            def agg(s: dict[str, Any] | None) -> float:
                return float(s["aggregate_tps"] or 0.0) if s else 0.0

            def ttft(s: dict[str, Any] | None) -> float:
                return float(s["ttft_ms"]["p50"] or 0.0) if s else 0.0

            ratio = agg(h) / agg(r) if agg(r) else 0.0
            other = f"{agg(m):.0f}" if m else "—"  # COMPARE=0: no third target
            vs = f"{agg(h) / agg(m):.2f}x" if agg(m) else "—"
            errs = f"{h['errors']['count'] if h else '-'}/{m['errors']['count'] if m else '-'}"
            print(
                f"| {Path(path).stem} | {n} | {agg(h):.0f} | {other} | {agg(r):.0f} "
                f"| {ratio:.2f}x{by_round(doc, n, 'aggregate_tps')} | {vs} "
                f"| {ttft(h):.0f} / {ttft(r):.0f}{by_round(doc, n, 'ttft_p50_ms')} | {errs} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
