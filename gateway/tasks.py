"""asyncio helpers the gateway's modules share."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(fut: asyncio.Future[Any]) -> None:
    """Cancel ``fut`` if it still runs and wait until it has stopped, whatever it raises: the
    work a request started ends with the request (a client that left, a stream that closed)."""
    if not fut.done():
        fut.cancel()
        with contextlib.suppress(BaseException):
            await fut
