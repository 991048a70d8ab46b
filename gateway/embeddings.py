"""The embed request path, shared by OpenAI's ``/v1/embeddings`` and Ollama's ``/api/embed``.

An embedding is not a generation (no deltas, no stream, no keep-alive ticks), so it does not go
through the generation session, but it takes the same rooms: the model resolved and recorded
(``Generations.model``, which also checks the model's kind), admission through the model's
queue (gateway/models.py: 429, 503, loading on demand), dispatch by the engine client, one
re-dispatch when the worker is lost before answering, and a client that hangs up cancels it.
The API formats the ``Embeddings`` it gets back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from starlette.requests import Request

from gateway.errors import from_worker
from gateway.record import Record
from gateway.session import DISCONNECT_POLL, ClientGone, Generations
from gateway.streams import Lost, RequestStream
from gateway.tasks import cancel_and_wait
from shared.protocol import Embed, Embeddings

log = logging.getLogger("hearth.embeddings")


async def embed(
    request: Request,
    gens: Generations,
    model: str,
    inputs: list[Any],
    params: dict[str, Any],
    keep_alive: float | None = None,
) -> Embeddings:
    """The vectors of ``inputs`` (texts or token id lists) from the embedding model ``model``
    (a name or alias). Errors are ``HearthError``s: 400 for a chat model, an input over the
    model's limit or ``dimensions`` it can't make; ``ClientGone`` if the client hung up."""
    cfg = gens.model(request, model, kind="embedding")
    m = gens.models[cfg.name]
    rs = RequestStream(Embed(uuid.uuid4().hex, cfg.name, inputs, params), gens.metrics)
    Record.of(request).fields["inputs"] = len(inputs)

    async def run() -> Embeddings:
        m.requested(keep_alive)
        since = rs.t_submit
        try:
            while True:
                worker = await gens.models.admit(m, since, front=rs.redispatched)
                gens.client.dispatch(rs, worker)
                try:
                    return await rs.embeddings()
                except Lost as lost:
                    if rs.redispatched:
                        raise from_worker(lost.error.code, lost.error.message) from None
                    rs.redispatched = True
                    since = time.monotonic()
                    log.warning("worker %s lost (%s); re-dispatching embed %s", rs.worker_id, lost.error.message, rs.id)
        finally:
            if not rs.finished:
                rs.finished = True
                gens.client.cancel(rs)
            m.touch()
            gens.models.changed()

    return await _watch(request, run())


async def _watch(request: Request, work: Any) -> Embeddings:
    """Await ``work`` while watching the client: if it hangs up first, cancel and raise."""
    task: asyncio.Task[Embeddings] = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone("the client closed the connection")
    finally:
        await cancel_and_wait(task)
