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

Those batches arrive, decode and leave together; a server's requests don't. On a GPU backend
``warm_up`` then runs the paths between them (``_joins``): sequences joining a batch that is
decoding, leaving it one at a time, and a second round over prompt-cache hits, whose first
request on the idle worker takes the direct first token. Without it, the first request that
joined a running batch on the H200 stalled every stream for 3.5 s (kernels compiled on first
use), once per process.
``warmup = false`` in a model's settings skips it.
"""

from __future__ import annotations

import logging
import time

from shared.device import warmup_batches, warmup_joins
from shared.protocol import Done, Error, Generate, Message
from worker.core import EngineCore
from worker.device import backend
from worker.prompt_cache import PromptCache

log = logging.getLogger("hearth.worker")
PROMPT = "Warm up."
NEW_TOKENS = 3  # the first comes from the prefill, the next from decode steps at this batch size
MAX_STEPS = 256
JOIN_ROWS = 3  # sequences of each round of ``_joins``: kernels compile per kind, not per batch size


class WarmupError(RuntimeError):
    """A warm-up batch did not complete: the worker must not become ready."""


def warm_up(
    core: EngineCore, sizes: list[int] | None = None, joins: bool | None = None
) -> list[tuple[int | str, float]]:
    """Run one batch of each size in ``sizes`` (default: what the backend's rule gives for
    ``max_batch``), then, with ``joins`` (default: the backend's rule), the staggered rounds of
    ``_joins``; return (size or "joins", seconds) per pass. Leaves no request, and no prompt
    cache entry, behind."""
    if sizes is None:
        sizes = warmup_batches(backend(), core.cfg.max_batch)
    if joins is None:
        joins = warmup_joins(backend())
    saved, core.prompt_cache = core.prompt_cache, None  # warm-up prompts are of no use later
    try:
        passes: list[tuple[int | str, float]] = [(n, _batch(core, n)) for n in sizes]
        if joins:
            core.prompt_cache = PromptCache(2 * JOIN_ROWS, 1 << 28)  # a scratch one: the second round hits it
            passes.append(("joins", _joins(core)))
        return passes
    finally:
        core.prompt_cache = saved


def _prompt(core: EngineCore, i: int, extra: int = 0) -> list[int]:
    """The warm-up prompt with a last token of its own per ``i`` (no two sequences are the same
    work), and ``extra`` more tokens after it (a prompt that extends an earlier one)."""
    tokens = list(core.m.tokenizer.encode(PROMPT)) or [0]
    return tokens + [(tokens[-1] + i) % core.m.vocab_size] * (1 + extra)


def _add(core: EngineCore, rid: str, prompt: list[int], max_tokens: int) -> list[Message]:
    params = {"temperature": 0.0, "max_tokens": max_tokens}
    return core.add(Generate(id=rid, model=core.cfg.name, input={"tokens": prompt}, params=params))


def _finish(core: EngineCore, events: list[Message], ids: list[str], what: str) -> None:
    """Step until the batch is empty; every one of ``ids`` must have ended with a ``done``."""
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
        raise WarmupError(f"warm-up {what} failed: {why}")


def _batch(core: EngineCore, n: int) -> float:
    t = time.perf_counter()
    events: list[Message] = []
    ids = [f"warmup-{n}-{i}" for i in range(n)]
    for i, rid in enumerate(ids):
        events += _add(core, rid, _prompt(core, i), NEW_TOKENS)
    _finish(core, events, ids, f"batch of {n}")
    return time.perf_counter() - t


def _joins(core: EngineCore) -> float:
    """Two rounds of ``JOIN_ROWS`` sequences, each added while the ones before it decode, with
    budgets that make them leave one at a time; the second round's prompts extend the first's,
    so they start from prompt-cache hits (the first of them, on the idle worker, directly)."""
    t = time.perf_counter()
    for round in (0, 1):
        events: list[Message] = []
        ids = [f"warmup-join-{round}-{i}" for i in range(JOIN_ROWS)]
        for i, rid in enumerate(ids):
            events += _add(core, rid, _prompt(core, i, extra=round), NEW_TOKENS + 2 * i)
            for _ in range(2):  # its prompt is in, and it decodes before the next one joins
                events += core.step()
        _finish(core, events, ids, f"joins (round {round + 1})")
    return time.perf_counter() - t
