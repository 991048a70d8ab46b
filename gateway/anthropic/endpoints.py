"""Anthropic Messages API endpoints. They validate, translate and call the engine client; they
never touch sockets.

A stream waits up to ``sse_keepalive`` for the model's first output before it commits to
SSE, so an error found at once (a prompt longer than the context) is still a plain JSON error
with its status; after that, a long prefill is bridged by ``ping`` events and an error is an
in-band ``error`` event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway import media, sse
from gateway.anthropic.schemas import CountTokensRequest, MessagesRequest, PromptFields
from gateway.anthropic.translate import Blocks, MessageShape, omitted_media, params_for, prompt_input
from gateway.bodies import read_json, validate
from gateway.client import EngineClient, RequestStream
from gateway.disconnect import GONE, unless_gone
from gateway.errors import HearthError, InvalidRequest, ModelNotFound, WorkerFailed, request_id
from gateway.openai.translate import ChoiceSpec
from shared.config import ModelConfig
from shared.protocol import ERROR_CONTEXT_LENGTH, Delta, Done


def _client(request: Request) -> EngineClient:
    return request.app.state.client


def _model(request: Request, client: EngineClient, req: PromptFields) -> ModelConfig:
    cfg = client.config.model(req.model)
    request.scope.setdefault("state", {})["model"] = cfg.name if cfg else "unknown"  # for metrics
    if cfg is None:
        raise ModelNotFound(f"model: {req.model}", param="model")
    return cfg


def _anthropic(err: HearthError) -> HearthError:
    """Say a too-long prompt the way Anthropic does ("prompt is too long"), which clients such as
    Claude Code recognise; other errors pass unchanged."""
    if err.code == ERROR_CONTEXT_LENGTH and not err.message.startswith("prompt is too long"):
        return InvalidRequest(f"prompt is too long: {err.message}", param=err.param, code=err.code)
    return err


async def messages(request: Request) -> Response:
    client = _client(request)
    data = await read_json(request, client.config.server.body_limit)
    req = validate(MessagesRequest, data, media.context(client.config, data, "anthropic"))
    cfg = _model(request, client, req)
    inp, params = prompt_input(req, cfg), params_for(req, cfg)
    media.record(request, omitted_media(req))
    headers = {"request-id": request_id()}
    # the generations, for the access log (gateway/access.py)
    generations: list[tuple[ChoiceSpec, RequestStream]] = request.scope["state"].setdefault("generations", [])
    job = _Job(client, cfg.name, inp, params, req.keep_alive, generations)
    try:
        if not req.stream:
            out = await unless_gone(request, _whole(job))
            if out is GONE:
                return Response(status_code=499)
            rid, blocks, done = out
            body = MessageShape(rid, req.model).message(blocks.content, done)
            return Response(orjson.dumps(body), media_type="application/json", headers=headers)
        opened = await unless_gone(request, _open(job))
    except HearthError as e:
        raise _anthropic(e) from None
    if opened is GONE:
        return Response(status_code=499)
    rs, events, first = opened
    body_iter = _stream(MessageShape(rs.id, req.model), rs, events, first)
    headers["cache-control"] = "no-cache"
    return StreamingResponse(body_iter, media_type="text/event-stream", headers=headers)


async def count_tokens(request: Request) -> Response:
    """``{"input_tokens": N}``: the worker counts the very input ``/v1/messages`` would send."""
    client = _client(request)
    data = await read_json(request, client.config.server.body_limit)
    req = validate(CountTokensRequest, data, media.context(client.config, data, "anthropic"))
    cfg = _model(request, client, req)
    media.record(request, omitted_media(req))
    n = await client.count_tokens(cfg.name, prompt_input(req, cfg))
    return Response(
        orjson.dumps({"input_tokens": n}), media_type="application/json", headers={"request-id": request_id()}
    )


@dataclass
class _Job:
    """One /v1/messages generation to start: where, what, and the access log's list."""

    client: EngineClient
    model: str
    inp: dict[str, Any]
    params: dict[str, Any]
    keep_alive: float | str | None
    opened: list[tuple[ChoiceSpec, RequestStream]]

    async def submit(self, stream: bool) -> RequestStream:
        rs = await self.client.submit(self.model, self.inp, self.params, stream=stream, keep_alive=self.keep_alive)
        self.opened.append((ChoiceSpec(0, 0, self.inp, self.params), rs))
        return rs


async def _whole(job: _Job) -> tuple[str, Blocks, Done]:
    rs = await job.submit(stream=False)
    blocks = Blocks()
    try:
        async for ev in rs:
            if isinstance(ev, Delta):
                blocks.delta(ev)
            else:
                blocks.finish()
                return rs.id, blocks, ev
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
    rs = await job.submit(stream=True)
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
    shape: MessageShape, rs: RequestStream, events: AsyncIterator[Delta | Done], pending: Next
) -> AsyncIterator[bytes]:
    """``message_start``, the blocks' events, ``message_delta``, ``message_stop``; ``ping`` while
    nothing comes for ``sse_keepalive``; an ``error`` event if the generation fails."""
    interval = rs.client.config.server.sse_keepalive
    blocks = Blocks()
    try:
        yield sse.named(*shape.start())
        while True:
            done, _ = await asyncio.wait({pending}, timeout=interval or None)  # 0: no pings
            if not done:
                yield sse.named("ping", {"type": "ping"})
                continue
            ev = pending.result()
            if isinstance(ev, Done):
                for name, data in [*blocks.finish(), *shape.end(ev)]:
                    yield sse.named(name, data)
                return
            for name, data in blocks.delta(ev):
                yield sse.named(name, data)
            pending = _next(events)
    except HearthError as e:  # after the first byte an error can only be an in-band event
        yield sse.named("error", _anthropic(e).anthropic_body())
    except StopAsyncIteration:
        yield sse.named("error", WorkerFailed("the stream ended without a result").anthropic_body())
    finally:
        if not pending.done():
            pending.cancel()
        rs.close()
