"""Spawning, watching, restarting and unloading worker processes.

Each model has a ``ModelRunner``: loading it starts one task per replica running the spawn ->
wait -> restart cycle; unloading it drains its workers (they finish in-flight work and exit)
and ends those tasks, without counting the exits as crashes. Workers are started by exec
(``python -m worker``), never fork, with OpenBLAS preloaded on Linux; they exit when the
gateway goes. A crash restarts the replica with exponential back-off; ``restart_limit``
crashes within ``restart_window`` seconds mark the model ``failed`` (with the reason) in /ready
and /v1/models. A worker whose heartbeats stop is killed and counted as a crash.

The ``Supervisor`` drives every model's lifecycle (gateway/models.py): it loads models on
demand (its demand loop sees a request waiting for an unloaded model) or by admin, and unloads
them when their keep-alive runs out, when another model needs their room, or by admin; the
decisions are gateway/residency.py's. Shutdown climbs the stop ladder (gateway/stopping.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from collections import deque
from collections.abc import Coroutine
from typing import Any

from gateway import residency
from gateway.client import EngineClient
from gateway.errors import Unavailable
from gateway.memory import Estimate, estimate, held
from gateway.models import Model, ModelState, Models
from gateway.group import parent_pid_ok, start_group
from gateway.spawn import child_env, worker_command
from gateway.stopping import Child, stop_ladder
from shared.config import Config, ModelConfig
from shared.protocol import Drain

log = logging.getLogger("hearth.supervisor")
WATCH_EVERY = 1.0
RESIDENCY_EVERY = 0.25  # how often keep-alive expiry is checked
MAX_BACKOFF = 30.0


class ModelRunner:
    """One model's worker processes: started together by ``start``, drained together by ``unload``."""

    def __init__(self, sup: Supervisor, cfg: ModelConfig) -> None:
        self.sup = sup
        self.cfg = cfg
        self.slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.name)
        self.tasks: list[asyncio.Task[None]] = []
        self.procs: dict[str, Child] = {}
        self.generations = [0] * cfg.replicas  # worker ids stay unique across restarts and reloads
        self.given_up = 0
        self.leaving = False  # being unloaded
        self.unloads = 0  # how many times: an escalation belongs to one unload
        self.unloaded = asyncio.Event()  # set while no replica task runs
        self.unloaded.set()

    @property
    def model(self) -> Model:
        return self.sup.models[self.cfg.name]

    @property
    def running(self) -> bool:
        """Its replica tasks run (loading, ready or draining)."""
        return any(not t.done() for t in self.tasks)

    def start(self) -> None:
        self.model.started()
        self.leaving = False
        self.given_up = 0
        self.unloaded.clear()
        self.tasks = [asyncio.create_task(self._run_replica(r)) for r in range(self.cfg.replicas)]
        log.info("loading %s (%d replica(s))", self.cfg.name, self.cfg.replicas)
        self.sup.models.changed()

    def unload(self, reason: str) -> None:
        """Drain this model's workers (in-flight requests finish), then let them exit for good."""
        if not self.running or self.leaving:
            return
        log.info("unloading %s (%s)", self.cfg.name, reason)
        self.leaving = True
        self.unloads += 1
        self.model.unloading()
        if self.sup.client.metrics is not None:
            self.sup.client.metrics.unloads.labels(self.cfg.name, reason).inc()
        for w in self.sup.models.pool.of_model(self.cfg.name):
            proc = self.procs.get(w.worker_id)
            if w.connected:
                self.sup.client.send(w.worker_id, Drain())
            elif proc is not None and proc.returncode is None:
                proc.terminate()  # not connected yet: a drain could not reach it
        self.sup.models.changed()
        unload = self.unloads
        self.sup.spawn(
            stop_ladder(
                lambda: self.procs.values(),
                self.sup.config.server.drain_timeout,
                self.cfg.name,
                # stop climbing if the model was loaded (and maybe unloaded) again meanwhile
                go_on=lambda: self.leaving and self.unloads == unload,
            )
        )

    async def _run_replica(self, replica: int) -> None:
        try:
            await self._replica_cycle(replica)
        finally:
            if all(t is asyncio.current_task() or t.done() for t in self.tasks):
                self._all_ended()  # the last replica task of this load

    def _all_ended(self) -> None:
        self.model.exited()
        if self.leaving:
            log.info("unloaded %s", self.cfg.name)
        self.leaving = False
        self.unloaded.set()
        self.sup.models.changed()

    async def _replica_cycle(self, replica: int) -> None:
        model, sup, client = self.cfg, self.sup, self.sup.client
        crashes: deque[float] = deque()
        while not (sup.stopping or self.leaving):
            worker_id = f"{self.slug}-r{replica}-g{self.generations[replica]}"
            self.generations[replica] += 1
            handle = sup.models.pool.add(worker_id, model.name)
            sup.models.changed()
            parent = os.getpid() if parent_pid_ok(model) else None  # mlx.launch's ranks are not our children
            cmd = worker_command(client.endpoint, worker_id, model, parent_pid=parent)
            try:
                proc: Child
                if model.distributed is not None:  # a worker group: its ranks as one (gateway/group.py)
                    group = await start_group(model, cmd, child_env(), sup.runtime_dir, worker_id)
                    handle.ranks, proc = group.ranks(), group
                else:
                    proc = await asyncio.create_subprocess_exec(*cmd, env=child_env())
            except OSError as e:
                sup.models.pool.remove(worker_id)
                self._give_up(f"cannot start a worker: {e}")
                return
            handle.pid = proc.pid
            self.procs[worker_id] = proc
            sup.procs[worker_id] = proc
            if self.leaving:
                proc.terminate()  # unloaded while it was being spawned
            log.info("spawned worker %s (pid %s) for %s", worker_id, proc.pid, model.name)
            rc = await proc.wait()
            self.procs.pop(worker_id, None)
            sup.procs.pop(worker_id, None)
            detail = handle.detail
            why = getattr(proc, "why", "") or f"exit code {rc}"  # a group says which rank ended it
            why += f": {detail}" if detail else ""
            client.worker_exited(worker_id, why)
            if sup.stopping or self.leaving:
                return
            log.warning("worker %s of %s ended (%s)", worker_id, model.name, why)
            sup.restarts[model.name] = sup.restarts.get(model.name, 0) + 1
            now = time.monotonic()
            crashes.append(now)
            while crashes and now - crashes[0] > sup.config.server.restart_window:
                crashes.popleft()
            if len(crashes) >= sup.config.server.restart_limit:
                window = sup.config.server.restart_window
                self._give_up(f"{len(crashes)} worker exits within {window:.0f}s; last: {why}")
                return
            await asyncio.sleep(min(0.5 * 2 ** (len(crashes) - 1), MAX_BACKOFF))

    def _give_up(self, why: str) -> None:
        """One replica stops restarting; the model is failed once all of them have."""
        self.given_up += 1
        log.error("a replica of %s stopped restarting: %s", self.cfg.name, why)
        if self.given_up >= self.cfg.replicas:
            log.error("model %s failed: %s", self.cfg.name, why)
            self.model.failed(why)
        self.sup.models.changed()


class Supervisor:
    def __init__(
        self, config: Config, models: Models, client: EngineClient, estimates: dict[str, Estimate] | None = None
    ) -> None:
        self.config = config
        self.models = models
        self.client = client
        self.estimates = estimates or {m.name: estimate(m) for m in config.models}
        self.limits = residency.Limits(config.server.max_loaded_models, config.server.memory_budget_bytes())
        self.runners = {m.name: ModelRunner(self, m) for m in config.models}
        self.procs: dict[str, Child] = {}  # every worker process (or group), by worker id
        self.restarts: dict[str, int] = {}
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def runtime_dir(self) -> Path:
        """The gateway's private runtime folder (a worker group's hostfile goes there)."""
        endpoint = self.client.endpoint
        return (
            Path(endpoint.removeprefix("ipc://")).parent
            if endpoint.startswith("ipc://")
            else Path(tempfile.gettempdir())
        )

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Start the preloaded models' workers now; the others when a request needs them."""
        for m in self.config.models:
            if m.preload and m.replicas:
                self.runners[m.name].start()
        self.spawn(self._watchdog())
        self.spawn(self._expire_idle())
        self.spawn(self._serve_demand())

    # -- residency ------------------------------------------------------------------------------

    def resident(self, name: str) -> residency.Resident:
        model, runner = self.models[name], self.runners[name]
        return residency.Resident(
            name=name,
            estimate=held(self.estimates[name].total, (w.heartbeat for w in self.models.pool.of_model(name))),
            last_used=model.last_used,
            idle=self.models.is_idle(model),
            ready=model.state is ModelState.READY,
            pinned=runner.cfg.pin,
            leaving=runner.leaving,
        )

    def residents(self) -> list[residency.Resident]:
        return [self.resident(n) for n, r in self.runners.items() if r.running]

    def expires_at(self, name: str) -> float | None:
        """When the model unloads if it stays idle (monotonic; None: never or not loaded yet)."""
        model, runner = self.models[name], self.runners[name]
        if runner.cfg.pin or not runner.running or runner.leaving or model.ready_since is None:
            return None
        at = residency.expires_at(model.last_used, model.ready_since, model.keep_alive_seconds())
        return None if at == residency.FOREVER else at

    def ensure_loaded(self, name: str) -> str | None:
        """Load ``name`` if it isn't, evicting idle models to make room; why it can't start yet, if
        so (None: it is loaded or loading). Raises ``Unavailable`` when it can never fit."""
        runner, model = self.runners[name], self.models[name]
        if self.stopping or not runner.cfg.replicas or model.reason:
            return None  # shutting down, external workers only, or failed (waiters say so)
        if runner.running and not runner.leaving:
            return None
        if runner.leaving:
            return f"'{name}' is still unloading"
        plan = residency.plan_load(name, self.estimates[name].total, self.residents(), self.limits)
        if plan.never:
            raise Unavailable(plan.never, code="memory_budget_exceeded")
        for victim in plan.victims:
            self.runners[victim].unload("evicted")
        if plan.wait:
            return plan.wait
        runner.start()
        return None

    def _plan(self, model: Model) -> None:
        """Load a model that requests wait for, recording on it why it must wait (or never can)."""
        try:
            blocked = self.ensure_loaded(model.name)
        except Unavailable as e:
            model.never = e.message
            self.models.changed()
            return
        if blocked != model.blocked:
            model.blocked = blocked
            self.models.changed()

    async def _serve_demand(self) -> None:
        """The demand loop: whenever something changes, load the models that requests wait for."""
        while not self.stopping:
            for model in self.models:
                if model.demand and not model.never:
                    self._plan(model)
            await self.models.wait_change(WATCH_EVERY)

    def begin_load(self, name: str) -> str | None:
        """An admin's load: like a request's, but a failed model gets a fresh start and a
        preloaded one counts for /ready again. Why it must wait for room, if it must; raises
        ``Unavailable`` when it can never fit."""
        model = self.models[name]
        model.fresh_start()
        model.never = None
        self._plan(model)
        if model.never:
            raise Unavailable(model.never, code="memory_budget_exceeded")
        return model.blocked

    async def load(self, name: str, timeout: float) -> None:
        """``begin_load``, waiting up to ``timeout`` for room; does not wait for readiness."""
        model = self.models[name]
        if self.begin_load(name) is None:
            return

        def room() -> bool | None:
            self._plan(model)
            return True if model.blocked is None else None

        await self.models.wait_until(
            model, room, time.monotonic() + timeout, f"the model '{name}' could not be loaded", load=False
        )

    async def unload(self, name: str, reason: str = "admin") -> None:
        """Unload ``name`` and wait until its workers have exited."""
        runner = self.runners[name]
        runner.unload(reason)
        self.models[name].required = False
        await runner.unloaded.wait()

    async def _expire_idle(self) -> None:
        """Unload idle models whose keep-alive ran out."""
        while not self.stopping:
            await asyncio.sleep(RESIDENCY_EVERY)
            now = time.monotonic()
            timed = [(self.resident(n), self.expires_at(n)) for n, r in self.runners.items() if r.running]
            for name in residency.due([(m, at) for m, at in timed if at is not None], now):
                self.runners[name].unload("idle")

    # -- liveness and shutdown ------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Kill workers whose heartbeats stopped; forget silent external workers."""
        timeout = self.config.server.heartbeat_timeout
        while not self.stopping:
            await asyncio.sleep(WATCH_EVERY)
            now = time.monotonic()
            for w in list(self.models.pool.workers.values()):
                if now - w.last_seen <= timeout:
                    continue
                proc = self.procs.get(w.worker_id)
                log.error("worker %s sent nothing for %.0fs; counting it as dead", w.worker_id, now - w.last_seen)
                w.detail = "heartbeat timeout"
                if proc is not None:
                    if proc.returncode is None:
                        proc.kill()
                else:
                    self.client.worker_exited(w.worker_id, "heartbeat timeout")

    async def stop(self) -> None:
        """Drain the workers we spawned, then SIGTERM, then SIGKILL what is left. Workers started
        on their own keep running: they say hello again to the next gateway on this endpoint."""
        self.stopping = True
        self.client.drain(list(self.procs))
        procs = list(self.procs.values())
        await stop_ladder(lambda: procs, self.config.server.drain_timeout, "shutdown")
        tasks = [t for r in self.runners.values() for t in r.tasks] + list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
