"""How long one ``mx.distributed.all_sum`` of a hidden-state row takes between local ranks.

A tensor-parallel step of SmolLM2 runs two all_sums per layer (after attention and after the
MLP; 30 layers), so this latency times 60 is a floor under every decode step of a worker group.
Run it under MLX's launcher, e.g.
``OPENBLAS_NUM_THREADS=1 mlx.launch -n 3 --backend ring python benchmarks/allsum.py``.
"""

from __future__ import annotations

import time

import mlx.core as mx

ROUNDS = 200
WIDTH = 576  # SmolLM2-135M's hidden size


def main() -> None:
    group = mx.distributed.init(strict=True, backend="ring")
    x = mx.ones((1, WIDTH))
    mx.eval(mx.distributed.all_sum(x, group=group))
    t = time.perf_counter()
    for _ in range(ROUNDS):
        mx.eval(mx.distributed.all_sum(x, group=group))
    each = (time.perf_counter() - t) / ROUNDS
    if group.rank() == 0:
        step = each * 60 * 1e3
        print(
            f"{group.size()} ranks: all_sum of {WIDTH} floats {each * 1e6:.0f} us (x60 per SmolLM2 step: {step:.1f} ms)"
        )


if __name__ == "__main__":
    main()
