"""Render a soak's JSON (benchmarks/soak.py --out) as a Markdown table and an ASCII chart of
memory over time (matplotlib is not a dependency of Hearth).

    python benchmarks/soak_report.py benchmarks/results/soak-….json
"""

from __future__ import annotations

import json
import sys
from typing import Any

MIB = 1 << 20
COLUMNS = (
    ("t", "t (s)", 1),
    ("requests", "requests", 1),
    ("gateway_rss", "gateway RSS (MiB)", MIB),
    ("worker_rss", "worker RSS (MiB)", MIB),
    ("reported", "reported footprint (MiB)", MIB),
    ("mlx_active", "MLX active (MiB)", MIB),
    ("mlx_cache", "MLX cache (MiB)", MIB),
    ("prompt_cache", "prompt cache (MiB)", MIB),
    ("gateway_fds", "gateway fds", 1),
    ("worker_fds", "worker fds", 1),
    ("errors", "errors", 1),
    ("tok_s", "tok/s", 1),
    ("kills", "kills", 1),
    ("unloads", "unloads", 1),
)


def table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = []
    for r in rows:
        cells = []
        for key, _, scale in COLUMNS:
            v = r.get(key, 0)
            cells.append(f"{v / scale:.0f}" if scale > 1 else (f"{v:.1f}" if isinstance(v, float) else str(v)))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def chart(rows: list[dict[str, Any]], height: int = 12) -> str:
    """Gateway (g) and worker (w) RSS over the rows, one column per row."""
    series = {"w": [r["worker_rss"] / MIB for r in rows], "g": [r["gateway_rss"] / MIB for r in rows]}
    top = max(max(s) for s in series.values()) or 1
    lines = []
    for level in range(height, 0, -1):
        lo = top * (level - 1) / height
        cells = []
        for i in range(len(rows)):
            mark = " "
            for sym, values in series.items():
                if values[i] > lo and (level == height or values[i] <= top * level / height):
                    mark = sym
            cells.append(mark)
        lines.append(f"{top * level / height:7.0f} MiB |" + "  ".join(cells))
    lines.append(" " * 12 + "+" + "---" * len(rows))
    lines.append(
        " " * 13 + "  ".join(str(i % 10) for i in range(len(rows))) + "   (row; w = worker RSS, g = gateway RSS)"
    )
    return "\n".join(lines)


def main(path: str) -> int:
    with open(path) as f:
        data = json.load(f)
    rows = data["rows"]
    print(table(rows))
    print()
    print("```")
    print(chart(rows))
    print("```")
    print()
    print("outcomes:", ", ".join(f"{k} {v}" for k, v in sorted(data["outcomes"].items())))
    print("errors:", ", ".join(f"{k} {v}" for k, v in sorted(data["errors"].items())) or "none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
