"""A worker group's follower rank (MLX_RANK > 0): no gateway socket, only rank 0's ops.

It loads its part of the model like rank 0 (the same loader steps: shard, self-check, warm-up,
warm prompt cache, all of them in lockstep with the other ranks), joins rank 0's channel, and
then runs each op rank 0 sends, in order, on its own ``GroupCore`` (worker/group.py): the same
admissions, cancels, trims and batch steps, so its collectives meet rank 0's. What its steps
produce is dropped: rank 0 answers the gateway. It exits when rank 0 says ``exit`` (after a
drain, having saved its prompt cache shard when told), when rank 0 has been silent for
``LEADER_SILENCE`` seconds, or when the gateway that spawned it is gone. SIGTERM alone does not
stop it while rank 0 lives (a service manager's stop reaches every rank, and rank 0 drains the
group and then tells it); after a SIGTERM it goes once rank 0 has been silent for
``TERM_SILENCE`` seconds (mlx.launch ends the other ranks that way when one fails). SIGINT is
ignored: a terminal's Ctrl-C is the gateway's.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import orjson

from shared.codec import ProtocolError
from shared.config import ModelConfig
from shared.gc_freeze import freeze_loaded
from worker import group_channel as ch
from worker import memory

log = logging.getLogger("hearth.worker")
BEAT_EVERY = 1.0
LEADER_SILENCE = 15.0  # rank 0 beats every second; this long without a word, it is gone
TERM_SILENCE = 2.5  # after a SIGTERM (mlx.launch ending its ranks): rank 0 silent this long, go


def load(cfg: ModelConfig) -> tuple[object, int, int]:
    """This rank's core, as rank 0's loader builds its own (worker/proc.py ``_Loader``)."""
    from worker.group import GroupCore, make_core
    from worker.model import load_model
    from worker.selfcheck import self_check
    from worker.warmup import warm_up

    core = make_core(load_model(cfg), cfg)
    assert isinstance(core, GroupCore)
    self_check(core)
    if cfg.warmup:
        warm_up(core)
    loaded = 0
    try:
        loaded = core.load_warm()
    except Exception:  # as rank 0: only an optimisation (rank 0 drops caches that differ)
        log.exception("could not load the prompt cache")
    budget = memory.model_bytes(core.m.model) + cfg.prompt_cache_bytes
    memory.bound_cache(cfg.cache_limit_bytes, budget)
    if loaded:
        log.info("%d prompt cache entries loaded (warm start)", loaded)
    return (
        core,
        (len(core.prompt_cache) if core.prompt_cache else 0),
        (core.prompt_cache.ntokens if core.prompt_cache else 0),
    )


def follow(cfg: ModelConfig, endpoint: str, rank: int, parent_pid: int | None) -> int:
    """Run this follower until rank 0 lets it go; the exit code."""
    from worker.group import GroupCore

    assert cfg.distributed is not None
    termed = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal termed
        termed = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    host = cfg.distributed.hosts[rank]
    core, entries, tokens = load(cfg)
    assert isinstance(core, GroupCore)
    freeze_loaded()  # as rank 0 does once loaded (shared/gc_freeze.py)
    channel = ch.FollowerChannel(endpoint, rank, host)
    try:
        channel.join(entries, tokens)
        log.info("rank %d of %d loaded; following rank 0 at %s", rank, core.size, endpoint)
        heard = next_beat = time.monotonic()
        while True:
            for op, payload in channel.recv(BEAT_EVERY):
                heard = time.monotonic()
                if op == ch.EXIT:
                    log.info("rank 0 let this rank go")
                    return 0
                _apply(core, op, payload)
                if core.broken:
                    log.error("a batch step failed (%s); exiting (the group restarts)", core.broken)
                    return 4
            now = time.monotonic()
            if termed and now - heard > TERM_SILENCE:
                log.info("SIGTERM, and rank 0 is silent: exiting")
                return 0
            if now - heard > LEADER_SILENCE:
                log.error("rank 0 said nothing for %.0fs; exiting", now - heard)
                return 0
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("gateway (pid %s) is gone; exiting", parent_pid)
                return 0
            if now >= next_beat:
                next_beat = now + BEAT_EVERY
                m = memory.read()
                channel.beat(m.footprint, m.active, m.cache, m.peak)
    finally:
        channel.close()


def _apply(core: object, op: bytes, payload: bytes) -> None:
    """Make rank 0's call on this rank's core. A request the core refuses is refused on rank 0
    too (the same code on the same input), so nothing is answered here."""
    from worker.group import GroupCore

    assert isinstance(core, GroupCore)
    if op == ch.STEP:
        core.step()
    elif op == ch.ADD:
        try:
            req = ch.decode_generate(payload)
        except ProtocolError as e:  # can't happen with rank 0's own encoding; loud if it does
            log.error("a bad add from rank 0: %s", e)
            return
        try:
            core.add(req)
        except Exception:
            log.exception("refusing request %s (as rank 0 did)", req.id)
    elif op == ch.CANCEL:
        core.cancel(str(orjson.loads(payload)["id"]))
    elif op == ch.CANCEL_ALL:
        core.cancel_all()
    elif op == ch.TRIM:
        if core.prompt_cache is not None:
            core.prompt_cache.trim(int(orjson.loads(payload)["keep_bytes"]))
    elif op == ch.SAVE:
        try:
            n = core.save_warm()
            if n:
                log.info("%d prompt cache entries saved for the next group", n)
        except Exception:
            log.exception("could not save the prompt cache")
