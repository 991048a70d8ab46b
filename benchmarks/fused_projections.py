"""Stacked projections (worker/fused_projections.py) against the model as mlx-lm builds it, in one
process: the same greedy tokens, and the decode step's time at several batch sizes.

    python benchmarks/fused_projections.py MODEL_DIR [--batches 1,8,32] [--context 300]

Both models load the same folder; the stacked one gets ``fused_projections.install``. Each batch
size prefills ``--context`` random tokens a row, then times ``--steps`` decode steps of each model,
alternating, three rounds; the median step time of each is printed with their ratio. The greedy
check decodes 64 tokens of 4 rows with both and reports the first step where they differ (none:
identical) and the largest logit difference at the first step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from worker import cpu_attention, fused_projections  # noqa: E402


def _decode_time(model, batch: int, context: int, steps: int) -> float:  # type: ignore[no-untyped-def]
    cache = make_prompt_cache(model)
    mx.eval(model(mx.random.randint(0, 1000, (batch, context), key=mx.random.key(1)), cache=cache))
    y = mx.random.randint(0, 1000, (batch, 1), key=mx.random.key(2))
    for _ in range(3):
        mx.eval(model(y, cache=cache))
    t = time.perf_counter()
    for _ in range(steps):
        y = mx.argmax(model(y, cache=cache)[:, -1:], axis=-1)
        mx.async_eval(y)
    mx.eval(y)
    return (time.perf_counter() - t) / steps


def _greedy(model, prompt: mx.array, n: int) -> tuple[list[Any], mx.array]:  # type: ignore[no-untyped-def]
    cache = make_prompt_cache(model)
    logits = model(prompt, cache=cache)[:, -1]
    first = logits
    out = []
    for _ in range(n):
        y = mx.argmax(logits, axis=-1)
        out.append(y.tolist())
        logits = model(y[:, None], cache=cache)[:, -1]
    return out, first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    plain = load(args.model)[0]
    stacked = load(args.model)[0]
    cpu_attention.install()
    groups = fused_projections.install(stacked)
    print(f"{mx.default_device()}: {groups} groups stacked", flush=True)

    prompt = mx.random.randint(0, 1000, (4, 40), key=mx.random.key(3))
    a, la = _greedy(plain, prompt, 64)
    b, lb = _greedy(stacked, prompt, 64)
    differ = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
    diff = mx.abs(la.astype(mx.float32) - lb.astype(mx.float32)).max().item()
    print(
        f"greedy 4 rows x 64 tokens: {'identical' if differ is None else f'first differs at step {differ}'}; "
        f"first-step logits max |diff| {diff:.3g}",
        flush=True,
    )

    for batch in (int(x) for x in args.batches.split(",")):
        times: dict[str, list[float]] = {"plain": [], "stacked": []}
        for _ in range(3):
            times["plain"].append(_decode_time(plain, batch, args.context, args.steps))
            times["stacked"].append(_decode_time(stacked, batch, args.context, args.steps))
        p, s = statistics.median(times["plain"]), statistics.median(times["stacked"])
        print(
            f"batch {batch:3d}, context {args.context}: plain {p * 1e3:7.2f} ms/step, stacked {s * 1e3:7.2f} "
            f"ms/step, plain / stacked {p / s:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
