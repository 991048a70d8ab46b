"""Where a bench run's time to first token went, from Hearth's access log.

    python3 benchmarks/ttft_parts.py HEARTH_LOG 16 64 128

The numbers are the bench's requests per step in order (``hearth bench`` at 8, 32, 64 clients
with 2 requests each: 16, 64, 128); the log's last lines are split into those steps. For each it
prints the p50 and p90 of the access log's ``ttft`` (the gateway's queue to the first token at
the gateway), ``worker_ttft`` (the worker taking the request to its first token), ``admit`` (of
that, the wait before its prefill was put in a batch) and their differences: the gateway's
routing plus the wait in the worker's socket (``ttft - worker_ttft``) and the prefill's own time
in the batch (``worker_ttft - admit``). A client's TTFT adds HTTP and its own parsing on top.
"""

from __future__ import annotations

import sys


def _fields(line: str) -> dict[str, float]:
    out = {}
    for part in line.split():
        key, _, value = part.partition("=")
        if key in ("ttft", "worker_ttft", "admit"):
            out[key] = float(value)
    return out


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return 1000 * s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str]) -> int:
    path, counts = argv[0], [int(n) for n in argv[1:]]
    rows = [_fields(x) for x in open(path, encoding="utf-8") if "hearth.access" in x and "/v1/" in x]
    rows = [r for r in rows if len(r) == 3][-sum(counts) :]
    heads = ("ttft", "worker_ttft", "admit", "gw+socket", "in batch")
    print(f"{'requests':>8}  " + "  ".join(f"{h:>11}" for h in heads) + "  (ms p50/p90)")
    start = 0
    for n in counts:
        part = rows[start : start + n]
        start += n
        cols = {
            "ttft": [r["ttft"] for r in part],
            "worker_ttft": [r["worker_ttft"] for r in part],
            "admit": [r["admit"] for r in part],
            "gw": [r["ttft"] - r["worker_ttft"] for r in part],
            "batch": [r["worker_ttft"] - r["admit"] for r in part],
        }
        cells = "  ".join(f"{_pct(v, 0.5):5.0f}/{_pct(v, 0.9):5.0f}" for v in cols.values())
        print(f"{n:>8}  {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
