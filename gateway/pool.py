"""The gateway's picture of its workers and models: who is connected, in which state, how busy.

Both the supervisor (spawns and exits) and the client (messages from workers) update it; the
probes and /v1/models read it. Every change wakes requests waiting for a ready worker.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from gateway.router import WorkerView, pick
from shared.config import Config, ModelConfig
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
            "memory_bytes": hb.memory_bytes if hb else None,
            "prompt_cache_bytes": hb.cache_bytes if hb else 0,
            "context_length": self.context_length or None,  # known once it is ready
            "trained_context_length": self.trained_context or None,  # set when RoPE-scaled beyond it
        }


@dataclass
class ModelEntry:
    cfg: ModelConfig
    failed: str | None = None  # why the supervisor gave up on it
    queue: deque[object] = field(default_factory=deque)  # tickets of requests waiting, in order
    resident: bool = False  # the supervisor runs worker processes for it (loading, ready or unloading)
    unloading: bool = False  # its workers are draining on purpose: no new requests go to them
    required: bool = False  # /ready waits for it: preloaded, and not unloaded on purpose since
    last_used: float = 0.0  # monotonic: a request for it started or ended
    ready_since: float | None = None  # monotonic: its first worker became ready (this load)
    keep_alive: float | None = None  # the last request's keep_alive override (None: the config's)

    def __post_init__(self) -> None:
        self.required = self.cfg.preload

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def keep_alive_seconds(self) -> float:
        return self.cfg.keep_alive_seconds() if self.keep_alive is None else self.keep_alive


class Pool:
    def __init__(self, config: Config) -> None:
        self.models = {m.name: ModelEntry(m) for m in config.models}
        self.workers: dict[str, WorkerHandle] = {}
        self._affinity: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._changed = asyncio.Event()

    # -- changes --------------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake everyone waiting for a change of the pool."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def add(self, worker_id: str, model: str) -> WorkerHandle:
        handle = WorkerHandle(worker_id, model)
        self.workers[worker_id] = handle
        self.notify()
        return handle

    def remove(self, worker_id: str) -> WorkerHandle | None:
        handle = self.workers.pop(worker_id, None)
        self.notify()
        return handle

    # -- queries --------------------------------------------------------------------------------

    def of_model(self, model: str) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.model == model]

    def touch(self, model: str) -> None:
        """A request for ``model`` started or ended: its keep-alive counts from now."""
        self.models[model].last_used = time.monotonic()

    def running(self, model: str) -> int:
        """Requests of ``model`` dispatched to its workers and not finished."""
        return sum(len(w.inflight) for w in self.of_model(model))

    def is_idle(self, model: str) -> bool:
        """No request for ``model`` is running or waiting."""
        return not self.models[model].queue and self.running(model) == 0

    def pick(self, model: str, affinity: str | None = None) -> WorkerHandle | None:
        """A ready worker of ``model`` with room in its batch: the one that served this
        conversation before if it is about as free as the least loaded, else the least loaded."""
        if self.models[model].unloading:
            return None
        limit = self.models[model].cfg.max_batch
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

    def model_state(self, model: str) -> str:
        entry = self.models[model]
        if entry.failed:
            return "failed"
        if entry.unloading:
            return "unloading"
        if entry.cfg.replicas and not entry.resident and not self.of_model(model):
            return "unloaded"
        states = {w.state for w in self.of_model(model) if w.connected}
        # a worker in `failed` is about to exit and be restarted: the model is not failed (yet)
        for s in (WorkerState.READY, WorkerState.LOADING, WorkerState.DRAINING):
            if s in states:
                return s.value
        return "starting"

    def is_ready(self) -> bool:
        """Every required model (preloaded, and not unloaded on purpose since) has a ready worker."""
        return all(self.model_state(n) == "ready" for n, e in self.models.items() if e.required)

    def describe(self, model: str) -> dict[str, Any]:
        entry = self.models[model]
        return {
            "state": self.model_state(model),
            "preload": entry.cfg.preload,
            "pinned": entry.cfg.pin,
            "detail": entry.failed,
            "waiting": entry.waiting,
            "workers": [w.describe() for w in self.of_model(model)],
            **self.context(model),
        }

    def context(self, model: str) -> dict[str, Any]:
        """The model's context length as its ready workers report it (else as configured), and
        its trained length when it runs beyond that (RoPE scaled)."""
        ws = [w for w in self.of_model(model) if w.context_length]
        ctx = max((w.context_length for w in ws), default=0) or self.models[model].cfg.context_length
        trained = max((w.trained_context for w in ws), default=0)
        return {"context_length": ctx, "trained_context_length": trained or None}
