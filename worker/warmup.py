"""The load-time warm-up: every batch shape the worker will run, once, before it says ready.

On a GPU backend MLX compiles kernels the first time it meets each shape: a fresh process on the
H200 spent 12.7 s in its first steps. Left to the first requests, that time lands on their time
to first token, and a long step can look like a hang to the gateway's heartbeat watchdog. So at
load (in the loader thread, while the main loop keeps sending heartbeats) ``warm_up`` sends
batches of real requests through the real path (``EngineCore.add`` -> mlx-lm's
``BatchGenerator``: prefill of the arrivals together, then decode steps) for each batch size
``shared.device.warmup_batches`` names: every size up to ``max_batch`` on a GPU; on the CPU,
where nothing is compiled, one batch of two (~0.3 s for SmolLM2-135M), which still proves the
batched path works before the worker says ready.
``warmup = false`` in a model's settings skips it.
"""

from __future__ import annotations

import logging
import time

from shared.device import warmup_batches
from shared.protocol import Done, Error, Generate, Message
from worker.core import EngineCore
from worker.device import backend

log = logging.getLogger("hearth.worker")
PROMPT = "Warm up."
NEW_TOKENS = 3  # the first comes from the prefill, the next from decode steps at this batch size
MAX_STEPS = 256


class WarmupError(RuntimeError):
    """A warm-up batch did not complete: the worker must not become ready."""


def warm_up(core: EngineCore, sizes: list[int] | None = None) -> list[tuple[int, float]]:
    """Run one batch of each size in ``sizes`` (default: what the backend's rule gives for
    ``max_batch``); return (size, seconds) per batch. Leaves no request, and no prompt cache
    entry, behind."""
    if sizes is None:
        sizes = warmup_batches(backend(), core.cfg.max_batch)
    saved, core.prompt_cache = core.prompt_cache, None  # warm-up prompts are of no use later
    try:
        return [(n, _batch(core, n)) for n in sizes]
    finally:
        core.prompt_cache = saved


def _batch(core: EngineCore, n: int) -> float:
    t = time.perf_counter()
    tokens = list(core.m.tokenizer.encode(PROMPT)) or [0]
    events: list[Message] = []
    ids = [f"warmup-{n}-{i}" for i in range(n)]
    for i, rid in enumerate(ids):
        # distinct prompts (a different last token each) so no two sequences are the same work
        prompt = tokens + [(tokens[-1] + i) % core.m.vocab_size]
        params = {"temperature": 0.0, "max_tokens": NEW_TOKENS}
        events += core.add(Generate(id=rid, model=core.cfg.name, input={"tokens": prompt}, params=params))
    widths: list[int] = []
    for _ in range(MAX_STEPS):
        if not core.has_work:
            break
        events += core.step()
        if not widths and backend() != "cpu":  # steps with drafts run wider shapes: compile them too
            widths = core.warm_speculation()
    ends = {e.id: e for e in events if isinstance(e, (Done, Error))}
    failed = [ends.get(rid) for rid in ids if not isinstance(ends.get(rid), Done)]
    if failed or core.broken or core.has_work:
        first = failed[0] if failed else None
        why = first.message if isinstance(first, Error) else core.broken or "did not finish"
        core.cancel_all()
        raise WarmupError(f"warm-up batch of {n} failed: {why}")
    return time.perf_counter() - t
