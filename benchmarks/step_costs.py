"""What a decode step of width W costs at B rows, relative to a plain step (W = 1): the data
behind ``shared/device.py``'s speculation costs (``worker.speculation.StepCost``).

python benchmarks/step_costs.py MODEL_DIR [--context 256] [--rows 1,2,4,8,16] [--widths 1,2,3,5,9] [--reps 10]

Builds a decode batch (``worker.ragged_cache``) of ``rows`` rows holding ``context`` tokens each,
on the model as the worker changes it (``worker.model.prepare``), then times forward passes of
each width over it (every pass taken back with ``trim``), and prints
ms per pass and the ratio to the plain pass. Run it on a quiet machine, on each backend.
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache

from worker.model import prepare
from worker.ragged_cache import RaggedCache


def batch(model: object, rows: int, context: int) -> RaggedCache:
    """``rows`` rows of ``context`` tokens each, prefilled one by one and joined together."""
    caches = []
    for b in range(rows):
        cache = make_prompt_cache(model)
        model(mx.array([[(7 * b + i) % 1000 + 10 for i in range(context)]]), cache=cache)  # type: ignore[operator]
        caches.append(cache)
    return RaggedCache.merge(caches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--rows", default="1,2,4,8,16")
    p.add_argument("--widths", default="1,2,3,5,9")
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args()
    model = load(a.model)[0]
    prepare(model)  # what the worker runs: NumPy's exp on the CPU, stacked projections on a GPU
    for rows in (int(x) for x in a.rows.split(",")):
        cache = batch(model, rows, a.context)
        base = 0.0
        cells = []
        for width in (int(x) for x in a.widths.split(",")):
            x = mx.zeros((rows, width), dtype=mx.int32)
            for _ in range(2):  # first use of a shape (kernels compile on a GPU)
                mx.eval(model(x, cache=cache.layers))
                cache.trim(width)
            t = time.perf_counter()
            for _ in range(a.reps):
                mx.eval(mx.argmax(model(x, cache=cache.layers), axis=-1))
                cache.trim(width)
            ms = (time.perf_counter() - t) / a.reps * 1e3
            base = base or ms
            cells.append(f"W{width} {ms:7.2f} ms ({ms / base:4.2f})")
        print(f"B={rows:<3d} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
