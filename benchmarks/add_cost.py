"""What admitting a request costs the worker's loop: ``EngineCore.add`` for a burst of the
concurrent scenario's chats, and its parts (the chat template, the prompt-cache lookup), in one
process on the model the worker would load.

    python benchmarks/add_cost.py MODEL_DIR [--requests 64]

A burst is read whole before the next step (worker/proc.py), so its adds run back to back while
every stream waits: at 64 clients their sum is added to each one's time to first token. The
cache is primed with one finished request first, as the bench's warm-up request does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.bench import prompts  # noqa: E402
from shared.config import ModelConfig  # noqa: E402
from shared.protocol import Generate  # noqa: E402
from worker.core import EngineCore  # noqa: E402
from worker.model import load_model  # noqa: E402
from worker.templating import render, system_prefix  # noqa: E402
from worker.warmup import warm_up  # noqa: E402


def _ms(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1e3:.2f} ms, total {sum(times) * 1e3:.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--requests", type=int, default=64)
    args = ap.parse_args()
    cfg = ModelConfig(name="bench", path=args.model, max_batch=max(8, args.requests))
    core = EngineCore(load_model(cfg), cfg)
    warm_up(core, [args.requests, 1])
    params = {"temperature": 0.0, "max_tokens": 8}

    def drain() -> None:
        while core.has_work:
            core.step()

    core.add(
        Generate(id="prime", model="bench", input={"messages": prompts.chat(0, "warmup", tokens=24)}, params=params)
    )
    drain()
    chats = [prompts.chat(0, "concurrent", args.requests, c, 0) for c in range(args.requests)]
    tok = core.m.tokenizer
    t_render, t_prefix, t_lookup, t_add = [], [], [], []
    for messages in chats:
        t = time.perf_counter()
        p = render(tok, {"messages": messages})
        t_render.append(time.perf_counter() - t)
        t = time.perf_counter()
        n = system_prefix(tok, {"messages": messages}, p)
        t_prefix.append(time.perf_counter() - t)
        if core.prompt_cache is not None:
            t = time.perf_counter()
            core.prompt_cache.lookup(p.tokens, n)
            t_lookup.append(time.perf_counter() - t)
    for i, messages in enumerate(chats):
        t = time.perf_counter()
        core.add(Generate(id=f"r{i}", model="bench", input={"messages": messages}, params=params))
        t_add.append(time.perf_counter() - t)
    t = time.perf_counter()
    core.step()
    first_step = time.perf_counter() - t
    drain()
    print(f"{args.requests} adds: {_ms(t_add)}; the first step after them {first_step * 1e3:.1f} ms")
    print(f"  render {_ms(t_render)}; system_prefix {_ms(t_prefix)}; prompt-cache lookup {_ms(t_lookup)}")


if __name__ == "__main__":
    main()
