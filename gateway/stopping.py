"""The stop ladder for worker processes: drain, then SIGTERM, then SIGKILL.

A drained worker finishes what it runs and exits on its own; one that does not within
``drain_timeout`` gets SIGTERM, then SIGKILL, a few seconds apart. Both a model's unload and
the gateway's shutdown climb it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

log = logging.getLogger("hearth.supervisor")
SIGNAL_WAIT = 3.0  # seconds between SIGTERM and SIGKILL, and after SIGKILL


class Child(Protocol):
    """A worker process as the supervisor drives it: an ``asyncio.subprocess.Process``, or a
    worker group's ranks as one (gateway/group.py)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    async def wait(self) -> int: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


async def stop_ladder(
    procs: Callable[[], Iterable[Child]],
    drain_timeout: float,
    what: str,
    go_on: Callable[[], bool] = lambda: True,
) -> None:
    """Wait for ``procs()`` (already told to drain) to exit, escalating to SIGTERM and SIGKILL;
    stops early once none is left or ``go_on()`` turns false (the model was loaded again)."""
    for sig, wait in (("drain", drain_timeout), ("terminate", SIGNAL_WAIT), ("kill", SIGNAL_WAIT)):
        alive = [p for p in procs() if p.returncode is None]
        if not alive or not go_on():
            return
        if sig != "drain":
            log.warning("%s: %d worker(s) did not exit after draining; %s", what, len(alive), sig)
            for p in alive:
                getattr(p, sig)()
        await asyncio.wait([asyncio.create_task(p.wait()) for p in alive], timeout=wait)
