"""Where serving time goes, without HTTP: mlx-lm's BatchGenerator alone vs Hearth's EngineCore.

python benchmarks/engine_overhead.py MODEL_DIR [--clients 32] [--tokens 128] [--rounds 2]

Each mode runs in a fresh child process (so MLX's first-use compiles and environment settings
such as MLX_CUDA_USE_CUDNN_SDPA apply to it alone), inserts ``clients`` sequences at once,
decodes ``tokens`` each, once to warm up and then ``rounds`` times timed:
- ``raw``: BatchGenerator stepped by hand, as ``hearth bench --raw`` does;
- ``raw-thread``: the same, with the model loaded and the generator made in another thread (as
  the worker's loader thread does) and stepped on the main thread;
- ``core``: Hearth's EngineCore (detokenizing, stop strings, deltas) on the same token prompts,
  prompt cache off;
- ``core-encode``: ``core`` plus encoding each step's Step message (what the worker sends);
- ``core-chat``: EngineCore with chat messages (template, system prompt segment, prompt cache on).
Prints ms per step and aggregate tok/s per mode.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODES = ("raw", "raw-thread", "core", "core-encode", "core-chat")


def _messages(i: int, r: int) -> list[dict[str, str]]:
    from gateway.bench import prompts

    return prompts.chat(0, "concurrent", 0, i, r, tokens=64)


def _child(mode: str, folder: str, clients: int, tokens: int, rounds: int) -> None:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import BatchGenerator

    from shared.codec import encode
    from shared.config import ModelConfig
    from shared.protocol import Generate, Step
    from worker.templating import prompt_tokens

    loaded: dict[str, Any] = {}

    def build() -> None:
        if mode.startswith("core"):
            from worker.core import EngineCore
            from worker.model import load_model

            cache = 1 << 30 if mode == "core-chat" else 0
            cfg = ModelConfig(name="m", path=folder, max_batch=clients, prompt_cache_bytes=cache)
            loaded["core"] = EngineCore(load_model(cfg), cfg)
            loaded["tok"] = loaded["core"].m.tokenizer
        else:
            model, tok = load(folder)[:2]
            loaded["model"], loaded["tok"] = model, tok
            loaded["gen"] = BatchGenerator(
                model,
                max_tokens=tokens,
                stop_tokens=[[t] for t in sorted(tok.eos_token_ids)],
                completion_batch_size=clients,
                prefill_batch_size=clients,
            )

    if mode == "raw-thread":
        t = threading.Thread(target=build)
        t.start()
        t.join()
    else:
        build()
    tok = loaded["tok"]

    def one_round(r: int) -> tuple[float, int, int]:
        prompts = [prompt_tokens(tok, {"messages": _messages(i, r)}) for i in range(clients)]
        t0 = time.perf_counter()
        steps = produced = 0
        if "gen" in loaded:
            gen = loaded["gen"]
            gen.insert(prompts, max_tokens=[tokens] * clients)
            done = 0
            while done < clients:
                _, responses = gen.next()
                steps += 1
                produced += len(responses)
                done += sum(1 for x in responses if x.finish_reason is not None)
        else:
            core = loaded["core"]
            for i, p in enumerate(prompts):
                inp: dict[str, Any] = {"messages": _messages(i, r)} if mode == "core-chat" else {"tokens": p}
                params = {"temperature": 0, "max_tokens": tokens}
                core.add(Generate(id=f"r{r}-{i}", model="m", input=inp, params=params))
            while core.has_work:
                events = core.step()
                steps += 1
                produced += sum(1 for e in events if type(e).__name__ == "Delta")
                if mode == "core-encode" and events:
                    encode(Step(events))
        mx.synchronize()
        return time.perf_counter() - t0, steps, produced

    one_round(0)
    for r in range(1, rounds + 1):
        wall, steps, produced = one_round(r)
        print(
            f"{mode:12s} clients={clients} {wall * 1e3 / max(steps, 1):7.2f} ms/step {steps:4d} steps "
            f"{clients * tokens / wall:8.0f} tok/s",
            flush=True,
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _child(a.child, a.model, a.clients, a.tokens, a.rounds)
        return 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x))
    for mode in a.modes.split(","):
        args = [a.model, "--clients", str(a.clients), "--tokens", str(a.tokens), "--rounds", str(a.rounds)]
        subprocess.run([sys.executable, __file__, *args, "--child", mode], env=env, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
