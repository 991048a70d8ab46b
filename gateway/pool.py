"""The gateway's picture of its workers: who is connected, in which state, how busy, and which
replica holds which conversation's KV cache.

The supervisor adds the workers it spawns and the engine client those that join on their own;
the client records what they report. Whoever changes it calls ``Models.changed`` (models.py),
which recomputes the models' states and wakes waiters.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gateway.memory import reported
from gateway.router import WorkerView, pick
from shared.protocol import Heartbeat, WorkerState

AFFINITY_ENTRIES = 4096  # conversations whose replica the pool remembers


@dataclass
class WorkerHandle:
    worker_id: str
    model: str
    state: WorkerState = WorkerState.LOADING
    connected: bool = False  # said hello
    pid: int | None = None
    detail: str = ""
    context_length: int = 0
    trained_context: int = 0  # set when context_length is beyond the model's trained length
    inflight: set[str] = field(default_factory=set)
    last_seen: float = field(default_factory=time.monotonic)
    loading_since: float = 0.0  # when it said it was loading, for the model load time
    heartbeat: Heartbeat | None = None
    ranks: list[dict[str, Any]] = field(default_factory=list)  # a worker group's ranks, as spawned

    def rank_list(self) -> list[dict[str, Any]] | None:
        """A worker group's ranks (pid, host, memory once rank 0 reports them); None: one process."""
        hb = self.heartbeat
        if hb is not None and hb.ranks:
            return hb.ranks
        return self.ranks or None

    def describe(self) -> dict[str, Any]:
        hb = self.heartbeat
        return {
            "id": self.worker_id,
            "state": self.state.value if self.connected else "starting",
            "pid": self.pid,
            "inflight": len(self.inflight),
            "detail": self.detail or None,
            "running": hb.running if hb else 0,  # as the worker last reported
            "waiting": hb.waiting if hb else 0,
            **reported(hb),  # the footprint (RSS / physical footprint), MLX's counters beside it
            "prompt_cache_bytes": hb.cache_bytes if hb else 0,
            "context_length": self.context_length or None,  # known once it is ready
            "trained_context_length": self.trained_context or None,  # set when RoPE-scaled beyond it
            **({"ranks": ranks} if (ranks := self.rank_list()) else {}),  # a worker group's
        }


class Pool:
    def __init__(self) -> None:
        self.workers: dict[str, WorkerHandle] = {}
        self._affinity: OrderedDict[tuple[str, str], str] = OrderedDict()

    def add(self, worker_id: str, model: str) -> WorkerHandle:
        handle = WorkerHandle(worker_id, model)
        self.workers[worker_id] = handle
        return handle

    def remove(self, worker_id: str) -> WorkerHandle | None:
        return self.workers.pop(worker_id, None)

    def of_model(self, model: str) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.model == model]

    def pick(self, model: str, limit: int, affinity: str | None = None) -> WorkerHandle | None:
        """A ready worker of ``model`` with fewer than ``limit`` requests in flight: the one that
        served this conversation before if it is about as free as the least loaded, else the
        least loaded."""
        views = [
            WorkerView(w.worker_id, w.state, len(w.inflight), limit)
            for w in self.of_model(model)
            if w.connected and len(w.inflight) < limit
        ]
        wid = pick(views, self._affinity.get((model, affinity)) if affinity else None)
        return self.workers[wid] if wid else None

    def remember(self, model: str, affinity: str | None, worker_id: str) -> None:
        """``worker_id`` now holds this conversation's KV cache (bounded LRU of conversations)."""
        if affinity is None:
            return
        key = (model, affinity)
        self._affinity.pop(key, None)
        self._affinity[key] = worker_id
        if len(self._affinity) > AFFINITY_ENTRIES:
            self._affinity.popitem(last=False)
