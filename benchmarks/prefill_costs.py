"""What an arrival costs a decoding batch: the time from inserting k prompts of L tokens into
mlx-lm's ``BatchGenerator`` (decoding ``--running`` other sequences, built as the worker builds
it) to their first tokens, the first time that (k, L) is seen and again.

python benchmarks/prefill_costs.py MODEL_DIR [--running 24] [--arrivals 1,3,8] [--lengths 57,64,71,96]

On a GPU a prefill pass of a new shape can cost far more than its tokens (kernels built on first
use); if the first-time column is much above the repeat column, arrivals that come one by one
pay it over and over (the TTFT gap of docs/benchmarks.md), and fewer, larger passes or shapes
rounded to a few sizes pay it less. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import time

from shared.device import apply_worker_env, installed_backend

apply_worker_env(os.environ, installed_backend())  # MLX as the worker runs it (no cuDNN attention on CUDA)

from mlx_lm import load  # noqa: E402  (after the environment: MLX reads it once)
from mlx_lm.generate import BatchGenerator  # noqa: E402

from worker.model import prepare  # noqa: E402


def prompt(n: int, salt: int) -> list[int]:
    return [(31 * salt + 7 * i) % 1000 + 10 for i in range(n)]


def first_tokens(gen: BatchGenerator, k: int, length: int, salt: int) -> tuple[float, int, float]:
    """Insert k prompts of ``length``; (seconds to all their first tokens, next() calls, the
    longest call), then take them out again."""
    t0 = time.perf_counter()
    uids = gen.insert([prompt(length, salt + j) for j in range(k)], max_tokens=[1 << 20] * k)
    waiting, calls, longest = set(uids), 0, 0.0
    while waiting:
        t = time.perf_counter()
        _, responses = gen.next()
        longest = max(longest, time.perf_counter() - t)
        calls += 1
        waiting -= {r.uid for r in responses}
    took = time.perf_counter() - t0
    gen.remove(uids)
    return took, calls, longest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--running", type=int, default=24)
    p.add_argument("--arrivals", default="1,3,8")
    p.add_argument("--lengths", default="57,64,71,96")
    p.add_argument("--max-batch", type=int, default=64)
    a = p.parse_args()
    model, _ = load(a.model)
    prepare(model)
    gen = BatchGenerator(
        model, stop_tokens=[], completion_batch_size=a.max_batch, prefill_batch_size=a.max_batch, prefill_step_size=512
    )
    gen.insert([prompt(64, 1000 + i) for i in range(a.running)], max_tokens=[1 << 20] * a.running)
    for _ in range(20):  # all running, and the decode shapes used once
        gen.next()
    t = time.perf_counter()
    for _ in range(20):
        gen.next()
    step = (time.perf_counter() - t) / 20
    print(f"decode step with {a.running} running: {1000 * step:.1f} ms")
    print(f"{'k':>3} {'L':>4}  {'first: ms (calls, longest call)':>32}  {'again: ms (calls, longest call)':>32}")
    salt = 0
    for k in (int(x) for x in a.arrivals.split(",")):
        for length in (int(x) for x in a.lengths.split(",")):
            cells = []
            for _ in range(2):
                salt += k
                took, calls, longest = first_tokens(gen, k, length, salt)
                cells.append(f"{1000 * took:9.1f} ({calls:2d}, {1000 * longest:6.1f})")
            print(f"{k:>3} {length:>4}  {cells[0]:>32}  {cells[1]:>32}")
    gen.close()


if __name__ == "__main__":
    main()
