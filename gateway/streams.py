"""One generation's mailbox in the gateway: the worker's events for it, in order, as they arrive.

The engine client's receive task calls ``arrive`` for each event of the request (that is also
when latency is measured: time to first token and one inter-token sample per token, as the
worker's events reach the gateway, however fast or slow the client reads). The generation
session iterates the stream: deltas (merged when several wait, so a slow reader gets fewer,
larger ones), then exactly one ``Done``, or an exception for an ``error``.

A worker that died (at any point), or that turned the request away (``not_ready``, before it
did anything for it: a fresh request, or a resumed one), raises ``Lost``: the session may
dispatch the request again, or resume it elsewhere (gateway/resume.py; ``progress`` is what the
session forwarded of it and its worker deaths).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from gateway.errors import WorkerFailed, from_worker
from gateway.resume import Progress
from shared.protocol import ERROR_NOT_READY, ERROR_WORKER_DIED, Delta, Done, Embed, Embeddings, Error, Generate

if TYPE_CHECKING:
    from gateway.metrics import Metrics

RETRYABLE = (ERROR_WORKER_DIED, ERROR_NOT_READY)  # the worker, not the request, is at fault


class Lost(Exception):
    """The request's worker died, or turned it away before it produced output."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.message)
        self.error = error


class RequestStream:
    """Deltas, then exactly one ``Done`` (or an exception for ``error``); for an ``Embed``, the
    one ``Embeddings`` answer (``embeddings()``)."""

    def __init__(self, msg: Generate | Embed, metrics: Metrics | None = None) -> None:
        self.msg = msg
        self.id = msg.id
        self.metrics = metrics
        self.worker_id: str | None = None
        self.queue: asyncio.Queue[Delta | Done | Error | Embeddings] = asyncio.Queue()
        self.started = False  # output reached the gateway
        self.redispatched = False  # re-dispatched after a worker turned it away (not_ready)
        self.progress = Progress()
        self.finished = False  # the session is done with it (read to the end, or closed)
        self.t_submit = time.monotonic()
        self.t_first = 0.0  # when the first delta arrived
        self.done: Done | None = None  # the final message, for the access log
        self.error: str | None = None  # the error code it ended with instead
        self.lost_why: str | None = None  # why its worker was lost, when it was
        self._t_last = 0.0  # when the last delta arrived, for inter-token latency
        self._tokens = 0

    def arrive(self, item: Delta | Done | Error | Embeddings) -> None:
        """An event from the worker (the receive task): measure, then queue it for the reader."""
        now = time.monotonic()
        metrics, model = self.metrics, self.msg.model
        if isinstance(item, Delta):
            self.started = True
            if not self.t_first:
                self.t_first = now
                if metrics is not None:
                    metrics.ttft.labels(model).observe(now - self.t_submit)
            elif item.tokens > self._tokens and metrics is not None:
                n = item.tokens - self._tokens
                gap = (now - self._t_last) / n
                for _ in range(n):
                    metrics.itl.labels(model).observe(gap)
            self._t_last, self._tokens = now, item.tokens
        elif isinstance(item, Done):
            self.done = item
            if metrics is not None:
                metrics.observe_done(model, item.usage)
        elif isinstance(item, Embeddings):
            if metrics is not None:
                metrics.observe_done(model, item.usage)
        else:
            self.error = item.code
        self.queue.put_nowait(item)

    async def __aiter__(self) -> AsyncIterator[Delta | Done]:
        """Merging keeps order: text that came after a tool call is not merged in front of it,
        nor reasoning in front of text that came before it."""
        pending: Delta | Done | Error | Embeddings | None = None
        while True:
            item = pending if pending is not None else await self.queue.get()
            pending = None
            if isinstance(item, Delta):
                if self.queue.empty():  # the reader keeps up (the usual case): pass it on as it is
                    yield item
                    continue
                parts, tokens, logprobs = [item.text], item.tokens, list(item.logprobs or [])
                calls = list(item.tool_calls or [])
                thoughts = [item.reasoning]
                ids: list[int] | None = list(item.token_ids) if item.token_ids is not None else None
                end: Done | Error | Embeddings | None = None
                while not self.queue.empty():
                    nxt = self.queue.get_nowait()
                    if not isinstance(nxt, Delta):
                        end = nxt
                        break
                    # a delta's reasoning precedes its text, and its text its calls
                    if (calls and (nxt.text or nxt.reasoning)) or (nxt.reasoning and any(parts)):
                        pending = nxt
                        break
                    parts.append(nxt.text)
                    thoughts.append(nxt.reasoning)
                    tokens = nxt.tokens
                    logprobs.extend(nxt.logprobs or [])
                    calls.extend(nxt.tool_calls or [])
                    ids = ids + nxt.token_ids if ids is not None and nxt.token_ids is not None else None
                yield Delta(self.id, "".join(parts), tokens, logprobs or None, calls or None, "".join(thoughts), ids)
                if end is None:
                    continue
                item = end
            if isinstance(item, Done):
                self.finished = True
                yield item
                return
            if isinstance(item, Embeddings):
                self.finished = True
                raise WorkerFailed("the worker answered a generation with embeddings")
            raise self._failure(item)

    async def embeddings(self) -> Embeddings:
        """The answer to an ``Embed``: its vectors, or the error (``Lost`` as for a generation)."""
        item = await self.queue.get()
        if isinstance(item, Embeddings):
            self.finished = True
            return item
        if isinstance(item, Error):
            raise self._failure(item)
        self.finished = True
        raise WorkerFailed(f"the worker answered an embed request with {item.KIND}")

    def _failure(self, item: Error) -> Exception:
        """``Lost`` when the worker (not the request) is at fault (it died, or turned the request
        away): the session decides what comes next (gateway/resume.py); else the request's
        error, naming the parameter (the input's kind when the worker names none)."""
        if item.code in RETRYABLE:  # (not_ready only ever comes before a dispatch's first output)
            self.error = None
            return Lost(item)
        self.finished = True
        first = next(iter(self.msg.input), None) if isinstance(self.msg, Generate) else "input"
        return from_worker(item.code, item.message, item.param or first)
