"""OpenAI endpoints. They validate, translate and call the engine client; they never touch sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway import sse
from gateway.bodies import read_json, validate
from gateway.client import EngineClient, RequestStream
from gateway.errors import HearthError, WorkerFailed, error_response
from gateway.openai.schemas import ChatCompletionRequest
from gateway.openai.translate import ChatShape, chat_input, params_for
from shared.protocol import Delta, Done

DISCONNECT_POLL = 0.5


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _client(request: Request) -> EngineClient:
    return request.app.state.client


async def list_models(request: Request) -> Response:
    pool = _client(request).pool
    data = []
    for name, entry in pool.models.items():
        info = pool.describe(name)
        data.append(
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "hearth",
                "state": info["state"],
                "detail": info["detail"],
                "workers": info["workers"],
                "path": entry.cfg.path,
            }
        )
    return _json({"object": "list", "data": data})


async def chat_completions(request: Request) -> Response:
    client = _client(request)
    req = validate(ChatCompletionRequest, await read_json(request, client.config.server.body_limit))
    cfg = client.config.model(req.model)
    params = params_for(req, cfg) if cfg else {}
    rs = await client.submit(req.model, chat_input(req), params, req.stream)
    shape = ChatShape(rs.id, req.model)
    if not req.stream:
        return await _complete(request, rs, shape)
    events = aiter(rs)
    try:  # an error before the first token is still a plain JSON error response
        first = await anext(events)
    except HearthError:
        rs.close()
        raise
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return StreamingResponse(_chat_sse(rs, events, first, shape, include_usage), media_type="text/event-stream")


async def _complete(request: Request, rs: RequestStream, shape: ChatShape) -> Response:
    """Non-streaming: wait for the answer, but cancel the work if the client goes away."""
    task = asyncio.create_task(rs.collect())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL)
            if done:
                text, final, logprobs = task.result()
                lp = logprobs if "logprobs" in rs.msg.params else None
                return _json(shape.response(text, final, lp))
            if await request.is_disconnected():
                task.cancel()
                return Response(status_code=499)
    finally:
        if not task.done():
            task.cancel()
        rs.close()


async def _chat_sse(
    rs: RequestStream, events: AsyncIterator[Delta | Done], first: Delta | Done, shape: ChatShape, include_usage: bool
) -> AsyncIterator[bytes]:
    want_lp = "logprobs" in rs.msg.params
    try:
        yield sse.event(shape.chunk({"role": "assistant", "content": ""}))
        ev: Delta | Done = first
        while True:
            if isinstance(ev, Delta):
                yield sse.event(shape.chunk({"content": ev.text}, logprobs=ev.logprobs if want_lp else None))
            else:
                yield sse.event(shape.chunk({}, finish=ev.finish_reason))
                if include_usage:
                    yield sse.event(shape.usage_chunk(ev))
                yield sse.DONE
                return
            ev = await anext(events)
    except HearthError as e:  # after the first byte an error can only be an in-band event
        yield sse.event(e.body())
    except StopAsyncIteration:
        yield sse.event(WorkerFailed("the stream ended without a result").body())
    finally:
        rs.close()


__all__ = ["chat_completions", "list_models", "error_response"]
