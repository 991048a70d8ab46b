"""Each configured model's lifecycle, owned in one place: its state, its queue, its residency
clock, and the one ``wait_until`` that everyone who must wait for it uses.

    unloaded ──start──▶ starting ──hello──▶ loading ──▶ ready ──unload──▶ unloading ──exit──▶ unloaded
                            ▲                   │          │                                   │
                            └──── restart ◀─────┴──────────┘ (a worker died)         failed ◀──┘ (gave up)

The supervisor (gateway/supervisor.py) drives the transitions — ``started``, ``unloading``,
``exited``, ``failed`` — and writes ``blocked``/``never`` when a load must wait for room or can
never fit; the engine client reports worker messages into the ``Pool`` and calls ``changed``.
Everyone else (the generation session, admin, probes, metrics) only asks: ``state``,
``describe``, ``wait_until``, ``admit``. A request that needs an unloaded model raises its
``demand``; the supervisor's demand loop sees it and loads the model (Ollama's scheduler works
the same way: requests ask, one owner loads), so no callback hides the control flow.

The state is stored, not derived on every read: ``changed`` recomputes it from the supervisor's
phase and the workers' own states and logs each transition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any, TypeVar

from gateway.errors import ModelNotFound, QueueFull, Unavailable
from gateway.pool import Pool, WorkerHandle
from shared.config import Config, ModelConfig
from shared.protocol import WorkerState

log = logging.getLogger("hearth.models")
T = TypeVar("T")


class ModelState(StrEnum):
    UNLOADED = "unloaded"  # no worker process (not preloaded yet, or unloaded)
    STARTING = "starting"  # processes spawned, none has said hello yet
    LOADING = "loading"  # a worker is loading the weights
    READY = "ready"  # at least one worker takes requests
    DRAINING = "draining"  # its workers finish what they run and take nothing new
    UNLOADING = "unloading"  # being unloaded on purpose: no new requests go to it
    FAILED = "failed"  # the supervisor gave up restarting it (``reason`` says why)


class Phase(StrEnum):
    """What the supervisor is doing with the model's processes."""

    IDLE = "idle"  # none running
    RUNNING = "running"  # replica tasks spawn and restart its workers
    UNLOADING = "unloading"  # its workers drain and exit for good


class Model:
    """One model's lifecycle and admission. Mutated by the supervisor (transitions) and by the
    session (``requested``, ``touch``); read by everyone."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.phase = Phase.IDLE
        self.state = ModelState.UNLOADED if cfg.replicas else ModelState.STARTING
        self.reason: str | None = None  # why it failed
        self.required = cfg.preload  # /ready waits for it (preloaded, not unloaded on purpose since)
        self.queue: deque[object] = deque()  # tickets of requests waiting for a worker, in order
        self.demand = 0  # waiters that need it loaded: the supervisor loads a model with demand
        self.blocked: str | None = None  # set by the supervisor: why its load waits (room)
        self.never: str | None = None  # set by the supervisor: why it can never be loaded
        self.last_used = 0.0  # monotonic: a request for it started or ended
        self.ready_since: float | None = None  # monotonic: its first worker of this load became ready
        self.keep_alive: float | None = None  # the last request's keep_alive (None: the config's)

    # -- transitions (the supervisor's) ------------------------------------------------------

    def started(self) -> None:
        self.phase = Phase.RUNNING
        self.reason = None
        self.ready_since = None
        self.blocked = self.never = None
        self.touch()

    def unloading(self) -> None:
        self.phase = Phase.UNLOADING
        self.required = False  # unloaded on purpose: /ready no longer waits for it

    def exited(self) -> None:
        self.phase = Phase.IDLE
        self.ready_since = None

    def failed(self, why: str) -> None:
        self.reason = why

    def fresh_start(self) -> None:
        """An admin's load: a failed model may try again, a preloaded one counts for /ready."""
        if self.phase is Phase.IDLE:
            self.reason = None
        self.required = self.cfg.preload
        self.touch()

    # -- what requests report ----------------------------------------------------------------

    def requested(self, keep_alive: float | None) -> None:
        """A request for it started: its keep-alive counts from now, with this request's
        ``keep_alive`` (seconds; None: the model's configured one), as with Ollama."""
        self.keep_alive = keep_alive
        self.touch()

    def touch(self) -> None:
        self.last_used = time.monotonic()

    # -- questions ---------------------------------------------------------------------------

    @property
    def resident(self) -> bool:
        """The supervisor runs worker processes for it (loading, ready or unloading)."""
        return self.phase is not Phase.IDLE

    @property
    def accepting(self) -> bool:
        return self.phase is not Phase.UNLOADING

    def keep_alive_seconds(self) -> float:
        return self.cfg.keep_alive_seconds() if self.keep_alive is None else self.keep_alive

    def compute_state(self, workers: list[WorkerHandle]) -> ModelState:
        if self.reason:
            return ModelState.FAILED
        if self.phase is Phase.UNLOADING:
            return ModelState.UNLOADING
        if self.cfg.replicas and self.phase is Phase.IDLE and not workers:
            return ModelState.UNLOADED
        states = {w.state for w in workers if w.connected}
        # a worker in `failed` is about to exit and be restarted: the model is not failed (yet)
        for s in (WorkerState.READY, WorkerState.LOADING, WorkerState.DRAINING):
            if s in states:
                return ModelState(s.value)
        return ModelState.STARTING


class Models:
    """Every configured model's ``Model``, the pool of their workers, and the one change signal
    that wakes whoever waits for either."""

    def __init__(self, config: Config, pool: Pool | None = None) -> None:
        self.config = config
        self.pool = pool or Pool()
        self.by_name = {m.name: Model(m) for m in config.models}
        self._changed = asyncio.Event()
        self.changed()

    def __iter__(self) -> Iterator[Model]:
        return iter(self.by_name.values())

    def __getitem__(self, name: str) -> Model:
        return self.by_name[name]

    def resolve(self, name: str, param: str = "model") -> Model:
        """The configured model a request's name (or alias) means; 404 naming ``param`` if none.
        Every API and the admin routes resolve here."""
        cfg = self.config.model(name)
        if cfg is None or cfg.name not in self.by_name:
            raise ModelNotFound(f"the model '{name}' does not exist", param=param)
        return self.by_name[cfg.name]

    # -- changes -----------------------------------------------------------------------------

    def changed(self) -> None:
        """Something about the models or their workers changed: recompute every state (logging
        transitions) and wake everyone waiting."""
        now = time.monotonic()
        for m in self.by_name.values():
            new = m.compute_state(self.pool.of_model(m.name))
            if new is not m.state:
                log.info("model %s: %s -> %s%s", m.name, m.state, new, f" ({m.reason})" if m.reason else "")
                m.state = new
            if new is ModelState.READY and m.ready_since is None:
                m.ready_since = now
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    async def wait_until(
        self, model: Model, ready: Callable[[], T | None], deadline: float, what: str, load: bool = True
    ) -> T:
        """Wait until ``ready()`` gives something (and return it), re-asking at every change.
        ``load``: the model is wanted loaded meanwhile (the supervisor sees the demand). Raises
        ``Unavailable`` when the model fails, can never load, or ``deadline`` (monotonic) passes
        (saying ``what`` did not happen, and why)."""
        if load:
            model.demand += 1
            self.changed()  # the supervisor's demand loop looks now
        try:
            while True:
                if model.reason:
                    raise Unavailable(f"the model '{model.name}' failed to start: {model.reason}", code="model_failed")
                if model.never:
                    raise Unavailable(model.never, code="memory_budget_exceeded")
                value = ready()
                if value is not None:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    if model.blocked:
                        raise Unavailable(f"the model '{model.name}' could not be loaded in time: {model.blocked}")
                    raise Unavailable(f"{what} in time; state: {model.state}")
                await self.wait_change(left)
        finally:
            if load:
                model.demand -= 1

    # -- admission ---------------------------------------------------------------------------

    def pick(self, model: Model, affinity: str | None = None) -> WorkerHandle | None:
        """A ready worker of ``model`` with room (see ``Pool.pick``); None while it unloads."""
        if not model.accepting:
            return None
        return self.pool.pick(model.name, model.cfg.max_batch, affinity)

    async def admit(self, model: Model, since: float, affinity: str | None = None, front: bool = False) -> WorkerHandle:
        """A worker with room for one more request, first come first served; bounded in number
        (429 once ``max_queue`` wait) and time (503 after ``request_wait`` from ``since``).
        ``front``: a request already admitted once (re-dispatched) goes first and is not refused."""
        if not model.queue:
            worker = self.pick(model, affinity)
            if worker is not None:
                return worker
        if not front and len(model.queue) >= model.cfg.max_queue:
            raise QueueFull(f"too many requests are waiting for '{model.name}'; retry shortly")
        ticket = object()
        if front:
            model.queue.appendleft(ticket)
        else:
            model.queue.append(ticket)
        try:
            return await self.wait_until(
                model,
                lambda: self.pick(model, affinity) if model.queue[0] is ticket else None,
                since + self.config.server.request_wait,
                f"no worker for '{model.name}' became ready",
            )
        finally:
            model.queue.remove(ticket)
            self.changed()  # the next in line may go now

    def ready_worker(self, model: Model) -> WorkerHandle | None:
        """The least busy ready worker, busy or not (for work that takes no batch slot)."""
        ready = [w for w in self.pool.of_model(model.name) if w.connected and w.state is WorkerState.READY]
        return min(ready, key=lambda w: len(w.inflight)) if ready else None

    # -- views -------------------------------------------------------------------------------

    def running(self, model: Model) -> int:
        """Requests of ``model`` dispatched to its workers and not finished."""
        return sum(len(w.inflight) for w in self.pool.of_model(model.name))

    def is_idle(self, model: Model) -> bool:
        """No request for ``model`` runs or waits."""
        return not model.queue and not model.demand and self.running(model) == 0

    def is_ready(self) -> bool:
        """Every required model (preloaded, and not unloaded on purpose since) has a ready worker."""
        return all(m.state is ModelState.READY for m in self.by_name.values() if m.required)

    def describe(self, model: Model) -> dict[str, Any]:
        return {
            "state": model.state.value,
            "preload": model.cfg.preload,
            "pinned": model.cfg.pin,
            "detail": model.reason,
            "waiting": len(model.queue),
            "workers": [w.describe() for w in self.pool.of_model(model.name)],
        }
