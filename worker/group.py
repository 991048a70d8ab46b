"""A worker group's ranks: MLX's distributed group, mlx-lm's sharding, and one engine core per
rank that takes the same batch decisions on every rank.

Every rank loads the same model split its own way (``shard``: mlx-lm's tensor parallelism, or
its pipeline split) and runs a ``GroupCore``, Hearth's ``EngineCore`` with three changes:

- on rank 0 each call that changes the batch (``add``, ``cancel``, ``cancel_all``, ``step``, a
  prompt cache ``trim``, ``save_warm``) is first sent to the followers (worker/group_channel.py),
  which make the same call on their core (worker/follower.py), so the ranks' batches, prompt
  caches and steps stay identical and their collectives pair up;
- every sampled token is rank 0's: the request's sampler runs on every rank and an ``all_sum``
  of rank 0's draw (the others add zero) replaces it, so a temperature > 0 draw, seeded or not,
  can't differ between ranks (each process's global PRNG is seeded from its clock; the ranks
  also take rank 0's seed at load). Greedy tokens are an argmax of logits that are the same
  bytes on every rank, so they need no broadcast;
- the warm prompt cache is saved and loaded per rank (``-rankRofN``): each rank's KV is its shard.

The load-time self-check and warm-up run on every rank, in lockstep, before rank 0 listens to
the gateway; rank 0 says ``ready`` only once every follower has joined.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import orjson
import mlx.nn as nn

from shared.config import DistributedConfig, ModelConfig
from shared.protocol import Generate, Heartbeat, Message
from worker import group_channel as ch
from worker.core import EngineCore, Rendered
from worker.model import LoadedModel
from worker.prompt_cache import PromptCache
from worker.sampling import Sampler, is_greedy

log = logging.getLogger("hearth.worker")


class GroupError(RuntimeError):
    """The group can't run this model this way (the worker's ``failed`` detail says why)."""


@functools.cache
def world(backend: str, size: int) -> mx.distributed.Group:
    """This process's group: MLX reads its rank (``MLX_RANK``) and the ring's addresses
    (``MLX_HOSTFILE``) from the environment the launcher gave it."""
    group = mx.distributed.init(strict=True, backend=backend)
    if group.size() != size:
        raise GroupError(f"the {backend} backend formed a group of {group.size()}; hosts lists {size} ranks")
    return group


def group_of(d: DistributedConfig) -> mx.distributed.Group:
    return world(d.backend, len(d.hosts))


def shard(model: nn.Module, d: DistributedConfig) -> None:
    """Split ``model`` (loaded lazily: only this rank's part is ever read) the way ``d`` says,
    then materialise it; every rank then meets once, as mlx-lm's ``sharded_load`` does."""
    group = group_of(d)
    if d.strategy == "tensor":
        if not hasattr(model, "shard"):
            raise GroupError(f"mlx-lm's {type(model).__module__} model has no tensor-parallel shard()")
        model.shard(group)
    else:
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "pipeline"):
            raise GroupError(f'mlx-lm\'s {type(model).__module__} model has no pipeline split; use strategy = "tensor"')
        inner.pipeline(group)
    mx.eval(model.parameters())
    # every rank meets once (as mlx-lm's sharded_load does), and takes rank 0's random seed: the
    # global PRNG is seeded from the clock in each process, so anything drawn from it without a
    # key of its own (besides the sampled tokens, which rank 0 broadcasts) agrees across ranks
    seed = mx.random.randint(0, 2**31 - 1, ()) if group.rank() == 0 else mx.array(0)
    shared: int = mx.distributed.all_sum(seed, stream=mx.cpu, group=group).item()  # type: ignore[assignment]
    mx.random.seed(shared)


class _GroupPromptCache(PromptCache):
    """The prompt cache, whose trims (rank 0's memory ceiling) every rank makes."""

    def __init__(self, entries: int, nbytes: int, tell: Callable[[bytes, bytes], None]) -> None:
        super().__init__(entries, nbytes)
        self._tell = tell

    def trim(self, keep_bytes: int) -> int:
        self._tell(ch.TRIM, b'{"keep_bytes": %d}' % keep_bytes)
        return super().trim(keep_bytes)


class GroupCore(EngineCore):
    """``EngineCore`` on one rank of a group (module docstring)."""

    def __init__(self, loaded: LoadedModel, cfg: ModelConfig) -> None:
        super().__init__(loaded, cfg)
        assert cfg.distributed is not None
        self.group = group_of(cfg.distributed)
        self.rank, self.size = self.group.rank(), self.group.size()
        self.channel: ch.LeaderChannel | None = None  # rank 0, once the followers joined
        self._wrapped: weakref.WeakKeyDictionary[Sampler, Sampler] = weakref.WeakKeyDictionary()
        self.wrap_sampler = self._rank0_draws
        if self.prompt_cache is not None:
            self.prompt_cache = _GroupPromptCache(cfg.prompt_cache_entries, cfg.prompt_cache_bytes, self._tell)

    def _tell(self, op: bytes, payload: bytes = b"{}") -> None:
        if self.channel is not None:
            self.channel.send(op, payload)

    def _rank0_draws(self, sampler: Sampler) -> Sampler:
        """``sampler``, with rank 0's draw broadcast (one wrapper per sampler object: mlx-lm
        samples a batch in one call when its sequences share the object). The greedy sampler
        stays itself: an argmax of logits that are the same bytes on every rank (the ring's
        ``all_sum`` hands every rank the same result, and what follows it is the same
        computation) is the same token, and the decode batch takes greedy rows' argmax
        straight from the logits (``is_greedy``). A wrapper keeps a seeded sampler's mark
        (``is_seeded``: one draw per token, in order)."""
        if is_greedy(sampler):
            return sampler
        known = self._wrapped.get(sampler)
        if known is not None:
            return known
        group, first = self.group, self.rank == 0

        @functools.wraps(sampler)  # its attributes too: the seeded mark
        def wrapped(logprobs: mx.array) -> mx.array:
            drawn = sampler(logprobs)
            return mx.distributed.all_sum(drawn if first else mx.zeros_like(drawn), group=group)

        self._wrapped[sampler] = wrapped
        return wrapped

    # -- what rank 0 tells its followers before doing it ------------------------------------------

    @property
    def renders_aside(self) -> bool:
        return False  # the ranks replay rank 0's adds in step order: each is added as it is read

    def add(self, req: Generate, rendered: Callable[[], Rendered] | None = None) -> list[Message]:
        self._tell(ch.ADD, ch.encode_generate(req))
        return super().add(req, rendered)

    def cancel(self, rid: str) -> None:
        self._tell(ch.CANCEL, orjson.dumps({"id": rid}))
        super().cancel(rid)

    def cancel_all(self) -> None:
        self._tell(ch.CANCEL_ALL)
        super().cancel_all()

    def step(self) -> list[Message]:
        self._tell(ch.STEP)
        return super().step()

    def save_warm(self) -> int:
        self._tell(ch.SAVE)
        return super().save_warm()

    def warm_folder(self) -> Path:
        base = super().warm_folder()
        return base.with_name(f"{base.name}-rank{self.rank}of{self.size}")


def make_core(loaded: LoadedModel, cfg: ModelConfig) -> EngineCore:
    """The engine core for this worker: a ``GroupCore`` on a group's rank, else the plain one."""
    return GroupCore(loaded, cfg) if cfg.distributed is not None else EngineCore(loaded, cfg)


def join_followers(core: EngineCore, endpoint: str) -> None:
    """Rank 0, loaded: wait for every follower's ``join``, then send them every op from now on.
    Prompt caches that did not load the same on every rank (a rank's saved shard missing) are
    dropped everywhere: the ranks must hold the same cache to take the same steps."""
    assert isinstance(core, GroupCore)
    channel = ch.LeaderChannel(endpoint, core.size - 1)
    joins = channel.wait_joined()
    cache = core.prompt_cache
    own = (len(cache), cache.ntokens) if cache is not None else (0, 0)
    core.channel = channel
    if any((j.entries, j.tokens) != own for j in joins) and cache is not None:
        log.warning("the ranks' warm prompt caches differ (%s vs rank 0's %s); starting cold", joins, own)
        cache.trim(0)  # told to the followers too
    log.info("all %d ranks joined: %s", core.size, ", ".join(f"rank {j.rank} pid {j.pid} on {j.host}" for j in joins))


def group_heartbeat(core: Any, hb: Heartbeat, host: str) -> Heartbeat:
    """Rank 0's heartbeat for the group: memory summed over the ranks, each rank listed (its pid,
    host and memory, for ``hearth ps``); the followers get a ``beat`` so they know rank 0 lives."""
    if not isinstance(core, GroupCore) or core.channel is None:
        return hb
    core.channel.send(ch.BEAT)

    mine = {"rank": 0, "pid": os.getpid(), "host": host, "memory_bytes": hb.memory_bytes,
            "mlx_active_bytes": hb.mlx_active_bytes, "mlx_cache_bytes": hb.mlx_cache_bytes,
            "mlx_peak_bytes": hb.mlx_peak_bytes}  # fmt: skip
    ranks = [mine] + [
        {k: v for k, v in dataclasses.asdict(r).items() if k not in ("entries", "tokens")}
        for _, r in sorted(core.channel.collect().items())
    ]
    total = {
        k: sum(int(r[k]) for r in ranks)
        for k in ("memory_bytes", "mlx_active_bytes", "mlx_cache_bytes", "mlx_peak_bytes")
    }
    return dataclasses.replace(hb, ranks=ranks, **total)


def release_followers(core: Any) -> None:
    """Rank 0 is leaving: its followers exit too (after a drain they have saved their caches)."""
    if isinstance(core, GroupCore) and core.channel is not None:
        core.channel.close()
        core.channel = None
