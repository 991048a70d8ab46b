"""``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``: validate, translate, run
the generation, format. They never touch sockets.

A stream waits up to ``sse_keepalive`` for the model's first output before it commits to SSE,
so an error found at once (a prompt longer than the context) is still a plain JSON error with
its status; after that, a long prefill is bridged by SSE comments and an error is an ``error``
event followed by ``response.failed``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.bodies import read_json, validate
from gateway.client import EngineClient, RequestStream
from gateway.disconnect import GONE, unless_gone
from gateway.errors import HearthError, InvalidRequest, ModelNotFound, NotFound, WorkerFailed
from gateway.openai.translate import ChoiceSpec
from gateway.responses.format import ResponseBuilder, ResponsesStream
from gateway.responses.schemas import ResponsesRequest
from gateway.responses.store import ResponseStore
from gateway.responses.translate import Prepared, echo, output_messages, prepare
from shared.protocol import Delta, Done

log = logging.getLogger("hearth.responses")
LEFT_OUT_HEADER = "x-hearth-tools-left-out"


def _client(request: Request) -> EngineClient:
    return request.app.state.client


def _store(request: Request) -> ResponseStore:
    return request.app.state.responses


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _named(err: HearthError) -> HearthError:
    """The worker names the chat input's parts (``messages``); here that is the ``input``."""
    if err.param in ("messages", "prompt"):
        err.param = "input"
    return err


async def create_response(request: Request) -> Response:
    client = _client(request)
    body = await read_json(request, client.config.server.body_limit)
    req = validate(ResponsesRequest, body)
    cfg = client.config.model(req.model)
    state = request.scope.setdefault("state", {})  # for metrics and the access log
    state["model"] = cfg.name if cfg else "unknown"
    if cfg is None:
        raise ModelNotFound(f"the model '{req.model}' does not exist", param="model")
    store = _store(request)
    previous = store.conversation(req.previous_response_id) if req.previous_response_id is not None else None
    prep = prepare(req, cfg, previous)
    headers = {}
    if prep.left_out:
        headers[LEFT_OUT_HEADER] = ", ".join(prep.left_out)
        log.info("tools left out of the prompt (Hearth can't run them): %s", ", ".join(prep.left_out))
    builder = ResponseBuilder(echo(req, body.get("tools"), cfg), prep.namespaces, logprobs=req.logprobs_wanted())
    job = _Job(client, cfg.name, prep, req, state.setdefault("generations", []))

    def keep(builder: ResponseBuilder) -> None:
        if req.store:
            store.put(builder.response(), [*prep.conversation, *output_messages(builder.output)])

    try:
        if not req.stream:
            out = await unless_gone(request, _whole(job, builder))
            if out is GONE:
                return Response(status_code=499)
            keep(builder)
            return _json(builder.response(), headers=headers)
        opened = await unless_gone(request, _open(job))
    except HearthError as e:
        raise _named(e) from None
    if opened is GONE:
        return Response(status_code=499)
    rs, events, first = opened
    fmt = ResponsesStream(builder, headers, finished=keep, rename=_named)
    return StreamingResponse(_stream(fmt, rs, events, first), media_type=fmt.media_type, headers=fmt.headers)


class _Job:
    """One generation to start: where, what, and the access log's list."""

    def __init__(
        self,
        client: EngineClient,
        model: str,
        prep: Prepared,
        req: ResponsesRequest,
        opened: list[tuple[ChoiceSpec, RequestStream]],
    ) -> None:
        self.client, self.model, self.prep, self.req, self.opened = client, model, prep, req, opened

    async def submit(self) -> RequestStream:
        p = self.prep
        rs = await self.client.submit(
            self.model, p.input, p.params, self.req.stream, keep_alive=self.req.keep_alive, affinity=p.affinity
        )
        self.opened.append((ChoiceSpec(0, 0, p.input, p.params), rs))
        return rs


async def _whole(job: _Job, builder: ResponseBuilder) -> None:
    rs = await job.submit()
    try:
        async for ev in rs:
            if isinstance(ev, Delta):
                builder.delta(ev)
            else:
                builder.done(ev)
                return
    finally:
        rs.close()
    raise WorkerFailed("the request ended without a result")


Next = asyncio.Task[Delta | Done]


def _next(events: AsyncIterator[Delta | Done]) -> Next:
    async def one() -> Delta | Done:
        return await anext(events)

    return asyncio.ensure_future(one())


async def _open(job: _Job) -> tuple[RequestStream, AsyncIterator[Delta | Done], Next]:
    """Submit, and wait a little for the first output: an error that comes at once is still a
    JSON error response. The first output's task is handed on, done or not."""
    rs = await job.submit()
    events = aiter(rs)
    first = _next(events)
    try:
        await asyncio.wait({first}, timeout=job.client.config.server.sse_keepalive or None)  # 0: wait
        if first.done():
            first.result()  # raises the error, if that is what came
        return rs, events, first
    except BaseException:
        first.cancel()
        rs.close()
        raise


async def _stream(
    fmt: ResponsesStream, rs: RequestStream, events: AsyncIterator[Delta | Done], pending: Next
) -> AsyncIterator[bytes]:
    """The stream's bytes: the opening, each event, keep-alive ticks in the gaps; an in-band
    failure if the generation fails. Closing it (the client left) cancels the generation."""
    interval = rs.client.config.server.sse_keepalive
    try:
        for chunk in fmt.opening(rs.id):
            yield chunk
        while True:
            done, _ = await asyncio.wait({pending}, timeout=interval or None)  # 0: no keep-alives
            if not done:
                yield fmt.keepalive()
                continue
            item = pending.result()
            for chunk in fmt.event(None, item):
                yield chunk
            if isinstance(item, Done):
                return
            pending = _next(events)
    except HearthError as e:  # after the first byte an error can only be an in-band event
        yield fmt.failure(e)
    except StopAsyncIteration:
        yield fmt.failure(WorkerFailed("the stream ended without a result"))
    finally:
        if not pending.done():
            pending.cancel()
        rs.close()


def _response_id(request: Request) -> str:
    request.scope.setdefault("state", {})["endpoint"] = "/v1/responses/{id}"  # one metrics label for all ids
    return str(request.path_params["response_id"])


def _not_stored(rid: str) -> NotFound:
    return NotFound(f"no stored response has the id '{rid}'", param="response_id", code="response_not_found")


async def get_response(request: Request) -> Response:
    rid = _response_id(request)
    if request.query_params.get("stream") in ("true", "1"):
        raise InvalidRequest("replaying a stored response as a stream is not supported", param="stream")
    stored = _store(request).get(rid)
    if stored is None:
        raise _not_stored(rid)
    return _json(stored.response)


async def delete_response(request: Request) -> Response:
    rid = _response_id(request)
    if not _store(request).delete(rid):
        raise _not_stored(rid)
    return _json({"id": rid, "object": "response.deleted", "deleted": True})
