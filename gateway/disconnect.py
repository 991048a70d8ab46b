"""Waiting on a request's work while watching its client: a client that hangs up while its
request is queued or generating cancels that work (and so frees the worker's batch slot),
instead of leaving it to run for nobody. Both APIs' endpoints use it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.requests import Request

DISCONNECT_POLL = 0.5  # seconds between looks at the connection

GONE = object()


async def unless_gone(request: Request, coro: Any, patience: float | None = None) -> Any:
    """Run ``coro`` (queueing, generating) but cancel it if the client disconnects meanwhile.
    With ``patience``: after that many seconds, hand back the still-running task instead."""
    task = asyncio.ensure_future(coro)
    deadline = None if patience is None else asyncio.get_running_loop().time() + patience
    handed_over = False
    try:
        while True:
            timeout = DISCONNECT_POLL
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - asyncio.get_running_loop().time()))
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                return GONE
            if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                handed_over = True
                return task
    finally:
        if not task.done() and not handed_over:
            task.cancel()
