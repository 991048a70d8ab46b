"""Speculative decoding in-process, without HTTP: ``streams`` closed-loop streams through
Hearth's EngineCore (each sends its next request when one finishes), with and without
speculation, alternately.

python benchmarks/speculation_loop.py MODEL_DIR [--scenario prose|edit] [--streams 8] [--requests 3] [--rounds 2]
    [--chain on|off]

The requests are ``hearth bench``'s (``gateway/bench/edit.py``: the edit file, or the prose
chats), greedy; with and without send the same prompts in a round, so both do the same work
(the prompt cache is off). Prints per side: wall time, aggregate tok/s, forward passes and the
drafts accepted (from the ``done`` usage) and the steps with drafts that were chained (launched
before the step before landed: ``speculative_chain``, off by default), then the
ratio with ÷ without over all rounds.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from gateway.bench import edit, prompts
from shared.config import ModelConfig
from shared.protocol import Done, Error, Generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--scenario", choices=("prose", "edit"), default="prose")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--chain", choices=("on", "off"), default="off")
    a = p.parse_args()
    from worker.core import EngineCore
    from worker.model import load_model

    cfg = ModelConfig(
        name="m",
        path=a.model,
        max_batch=max(a.streams, 1),
        prompt_cache_bytes=0,
        speculative="lookup",
        speculative_chain=a.chain == "on",
    )
    core = EngineCore(load_model(cfg), cfg)
    max_tokens = edit.EDIT_MAX_TOKENS if a.scenario == "edit" else edit.PROSE_MAX_TOKENS

    def messages(k: int) -> Any:
        return edit.edit_messages(k) if a.scenario == "edit" else prompts.chat(0, "loop", k, tokens=64)

    def run(round_: int, spec: bool) -> tuple[float, int]:
        queue = [round_ * 1000 + i for i in range(a.streams * a.requests)]
        live, n = 0, 0
        usage = {"completion_tokens": 0, "draft_tokens": 0, "accepted_draft_tokens": 0}

        def start() -> None:
            nonlocal live, n
            params = {"temperature": 0, "max_tokens": max_tokens, "speculative": spec}
            chat = {"messages": messages(queue.pop(0))}
            core.add(Generate(id=f"{round_}-{spec}-{n}", model="m", input=chat, params=params))
            live, n = live + 1, n + 1

        for _ in range(min(a.streams, len(queue))):
            start()
        steps0 = core._decode.steps if core._decode is not None else 0  # noqa: SLF001  (a benchmark's look inside)
        chained0 = core._decode.chained if core._decode is not None else 0  # noqa: SLF001
        t0 = time.perf_counter()
        while live:
            for e in core.step():
                if isinstance(e, Done | Error):
                    live -= 1
                    for k in usage:
                        usage[k] += e.usage.get(k, 0) if isinstance(e, Done) else 0
                    if queue:
                        start()
        wall = time.perf_counter() - t0
        steps = (core._decode.steps if core._decode is not None else 0) - steps0  # noqa: SLF001
        chained = (core._decode.chained if core._decode is not None else 0) - chained0  # noqa: SLF001
        tokens = usage["completion_tokens"]
        print(
            f"round {round_} {'with   ' if spec else 'without'} {wall:7.2f} s {tokens:6d} tokens "
            f"{tokens / wall:8.1f} tok/s {steps:5d} forward passes "
            f"accepted {usage['accepted_draft_tokens']}/{usage['draft_tokens']} chained {chained}",
            flush=True,
        )
        return wall, tokens

    run(0, True)  # warm-up
    walls = {True: 0.0, False: 0.0}
    for r in range(1, a.rounds + 1):
        for spec in (True, False) if r % 2 else (False, True):
            walls[spec] += run(r, spec)[0]
    print(f"{a.scenario} x{a.streams}: with ÷ without (aggregate tok/s, same work) {walls[False] / walls[True]:.2f}")


if __name__ == "__main__":
    main()
