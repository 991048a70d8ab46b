"""Spawning, watching and restarting worker processes.

One task per model replica runs the spawn -> wait -> restart cycle. Workers are started by
exec (``python -m worker``), never fork, with OpenBLAS preloaded on Linux; they exit when the
gateway goes. A crash restarts the replica with exponential back-off; ``restart_limit`` crashes
within ``restart_window`` seconds mark the model ``failed`` (with the reason) in /ready and
/v1/models. A worker whose heartbeats stop is killed and counted as a crash. Shutdown
escalates: drain, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from collections import deque
from pathlib import Path

from gateway.client import EngineClient
from shared.blas import with_openblas
from shared.config import Config, ModelConfig

log = logging.getLogger("hearth.supervisor")
ROOT = Path(__file__).resolve().parent.parent
WATCH_EVERY = 1.0
MAX_BACKOFF = 30.0


def worker_command(endpoint: str, worker_id: str, model: ModelConfig) -> list[str]:
    return [
        sys.executable, "-m", "worker",
        "--endpoint", endpoint,
        "--worker-id", worker_id,
        "--model-json", model.to_json().decode(),
        "--parent-pid", str(os.getpid()),
    ]  # fmt: skip


def worker_env() -> dict[str, str]:
    env = with_openblas(os.environ) or dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class Supervisor:
    def __init__(self, config: Config, client: EngineClient) -> None:
        self.config = config
        self.client = client
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.restarts: dict[str, int] = {}
        self.started: set[str] = set()  # models whose replicas are running
        self.given_up: dict[str, int] = {}  # replicas that used up their restart budget
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start the preloaded models' workers now; the others on their first request."""
        self.client.on_demand = self.ensure_started
        for m in self.config.models:
            if m.preload:
                self.ensure_started(m.name)
        self._tasks.append(asyncio.create_task(self._watchdog()))

    def ensure_started(self, name: str) -> None:
        if name in self.started or self.stopping:
            return
        self.started.add(name)
        m = next(m for m in self.config.models if m.name == name)
        for replica in range(m.replicas):
            self._tasks.append(asyncio.create_task(self._run_replica(m, replica)))

    async def _run_replica(self, model: ModelConfig, replica: int) -> None:
        crashes: deque[float] = deque()
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model.name)
        generation = 0
        while not self.stopping:
            worker_id = f"{slug}-r{replica}-g{generation}"
            generation += 1
            handle = self.client.pool.add(worker_id, model.name)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *worker_command(self.client.endpoint, worker_id, model), env=worker_env()
                )
            except OSError as e:
                self.client.pool.remove(worker_id)
                self._give_up(model, f"cannot start a worker: {e}")
                return
            handle.pid = proc.pid
            self.procs[worker_id] = proc
            log.info("spawned worker %s (pid %s) for %s", worker_id, proc.pid, model.name)
            rc = await proc.wait()
            self.procs.pop(worker_id, None)
            detail = handle.detail
            why = f"exit code {rc}" + (f": {detail}" if detail else "")
            self.client.worker_exited(worker_id, why)
            if self.stopping:
                return
            log.warning("worker %s of %s ended (%s)", worker_id, model.name, why)
            self.restarts[model.name] = self.restarts.get(model.name, 0) + 1
            now = time.monotonic()
            crashes.append(now)
            while crashes and now - crashes[0] > self.config.server.restart_window:
                crashes.popleft()
            if len(crashes) >= self.config.server.restart_limit:
                self._give_up(
                    model, f"{len(crashes)} worker exits within {self.config.server.restart_window:.0f}s; last: {why}"
                )
                return
            await asyncio.sleep(min(0.5 * 2 ** (len(crashes) - 1), MAX_BACKOFF))

    def _give_up(self, model: ModelConfig, why: str) -> None:
        """One replica stops restarting; the model is failed once all of them have."""
        self.given_up[model.name] = self.given_up.get(model.name, 0) + 1
        log.error("a replica of %s stopped restarting: %s", model.name, why)
        if self.given_up[model.name] >= model.replicas:
            log.error("model %s failed: %s", model.name, why)
            self.client.pool.models[model.name].failed = why
        self.client.pool.notify()

    async def _watchdog(self) -> None:
        """Kill workers whose heartbeats stopped; forget silent external workers."""
        timeout = self.config.server.heartbeat_timeout
        while not self.stopping:
            await asyncio.sleep(WATCH_EVERY)
            now = time.monotonic()
            for w in list(self.client.pool.workers.values()):
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
        for sig, wait in (("drain", self.config.server.drain_timeout), ("terminate", 3.0), ("kill", 3.0)):
            alive = [p for p in procs if p.returncode is None]
            if not alive:
                break
            if sig != "drain":
                for p in alive:
                    getattr(p, sig)()
            await asyncio.wait([asyncio.create_task(p.wait()) for p in alive], timeout=wait)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
