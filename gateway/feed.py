"""A streamed response's events, read ahead in a task of their own, with keep-alive ticks.

The stream's body used to wait for each event through a new task (``anext`` of the session's
generator) and ``asyncio.wait`` with the keep-alive as its timeout: a task, a waiter and a timer
per token per stream. Under load that was a good part of the gateway's time per token (py-spy,
64 streams of the tiny model on the 2-core CPU: the body's waiting ~15% of the event loop's busy
samples). Here one task per stream reads the events into a list; the body takes everything
that is there at once (so events that queued up while the client's socket was busy go out in
one write) and waits on one future only when nothing is; the keep-alive is one timer, moved
along to ``every`` seconds after the latest event only when it fires.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from gateway.tasks import cancel_and_wait

TICK = object()  # nothing came for the keep-alive interval
END = object()  # the events are over


class Feed:
    """Items for the body: events, ``TICK``, ``END``, or the exception the events raised."""

    def __init__(self, first: asyncio.Future[Any], events: AsyncIterator[Any], every: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None
        self._every = every
        self._last = self._loop.time()  # when the latest item came
        self._timer = self._loop.call_later(every, self._tick) if every else None
        self._task = asyncio.ensure_future(self._fill(first, events))

    async def _fill(self, first: asyncio.Future[Any], events: AsyncIterator[Any]) -> None:
        try:
            item = await first  # the first event: already asked for by the session
            if item is not None:
                self._put(item)
                async for item in events:
                    self._put(item)
            self._put(END)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 — handed to the body, which raises or writes it
            self._put(e)

    def _put(self, item: Any) -> None:
        self._items.append(item)
        self._last = self._loop.time()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _tick(self) -> None:
        assert self._every is not None
        due = self._last + self._every
        now = self._loop.time()
        if now >= due:
            if not self._items:  # a reader that is behind has bytes to write already
                self._put(TICK)
            due = now + self._every
        self._timer = self._loop.call_at(due, self._tick)

    async def take(self) -> list[Any]:
        """Everything that came since the last take; waits when nothing has."""
        if not self._items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        out, self._items = self._items, []
        return out

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await cancel_and_wait(self._task)
