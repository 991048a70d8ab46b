"""OpenAI endpoints. They validate, translate and call the engine client; they never touch sockets.

A request becomes one generation per choice (``n`` per prompt); streaming merges the choices'
events as they come. Anything that fails before the first byte is a plain JSON error; after
it, an in-band SSE error event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway import sse
from gateway.bodies import read_json, validate
from gateway.client import EngineClient, RequestStream, Result
from gateway.disconnect import GONE, unless_gone
from gateway.errors import HearthError, WorkerFailed
from gateway.openai.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from gateway.openai.translate import (
    ChatShape,
    ChoiceSpec,
    CompletionShape,
    Shape,
    chat_input,
    completion_inputs,
    expand,
    params_for,
    usage,
)
from shared.protocol import Delta, Done


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
    return await _generate(request, client, req, [chat_input(req)], ChatShape)


async def completions(request: Request) -> Response:
    client = _client(request)
    req = validate(CompletionRequest, await read_json(request, client.config.server.body_limit))
    return await _generate(request, client, req, completion_inputs(req), CompletionShape)


async def _generate(
    request: Request, client: EngineClient, req: SamplingFields, inputs: list[dict[str, Any]], shape_cls: type[Shape]
) -> Response:
    cfg = client.config.model(req.model)
    state = request.scope.setdefault("state", {})  # for metrics and the access log
    state["model"] = cfg.name if cfg else "unknown"
    generations: list[tuple[ChoiceSpec, RequestStream]] = state.setdefault("generations", [])
    params = params_for(req, cfg) if cfg else {}
    specs = expand(inputs, params, req.n)
    want_lp = "logprobs" in params

    if not req.stream:

        async def whole() -> tuple[str, list[Result]]:
            streams = await _open(client, req, specs, generations)
            try:
                return streams[0].id, list(await asyncio.gather(*(rs.collect() for rs in streams)))
            finally:
                for rs in streams:
                    rs.close()

        out = await unless_gone(request, whole())
        if out is GONE:
            return Response(status_code=499)
        rid, results = out
        shape = shape_cls(rid, req.model)
        choices = [
            shape.choice(
                spec.index, r.text, r.done.finish_reason, r.logprobs if want_lp else None, r.tool_calls, r.done.note
            )
            for spec, r in zip(specs, results, strict=True)
        ]
        return _json(shape.response(choices, usage([(spec, r.done) for spec, r in zip(specs, results, strict=True)])))

    async def opening() -> tuple[str, AsyncGenerator[tuple[ChoiceSpec, Delta | Done]], tuple[ChoiceSpec, Delta | Done]]:
        streams = await _open(client, req, specs, generations)
        merged = _merge(specs, streams)
        try:  # an error before the first token is still a plain JSON error response
            return streams[0].id, merged, await anext(merged)
        except BaseException:
            await merged.aclose()
            raise

    keepalive = client.config.server.sse_keepalive
    opened = await unless_gone(request, opening(), patience=keepalive or None)
    if opened is GONE:
        return Response(status_code=499)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    if isinstance(opened, asyncio.Future):  # still queued or prefilling: answer now, keep the line alive
        body = _sse_once_open(opened, keepalive, req.model, shape_cls, len(specs), want_lp, include_usage)
        return StreamingResponse(body, media_type="text/event-stream")
    rid, merged, first = opened
    body = _sse(merged, first, shape_cls(rid, req.model), len(specs), want_lp, include_usage)
    return StreamingResponse(body, media_type="text/event-stream")


async def _sse_once_open(
    opening: asyncio.Future[Any],
    every: float,
    model: str,
    shape_cls: type[Shape],
    n: int,
    want_lp: bool,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """A stream whose first token is slow to come (a long prompt prefilling, a queue): SSE
    comments every ``every`` seconds keep proxies and clients from timing the connection out;
    an error before the first token is then an in-band error event, as after it."""
    try:
        while True:
            done, _ = await asyncio.wait({opening}, timeout=every)
            if done:
                break
            yield sse.KEEPALIVE
        try:
            rid, merged, first = opening.result()
        except HearthError as e:
            yield sse.event(e.body())
            return
        async for chunk in _sse(merged, first, shape_cls(rid, model), n, want_lp, include_usage):
            yield chunk
    finally:
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(BaseException):
                await opening
        elif not opening.cancelled() and opening.exception() is None:
            await opening.result()[1].aclose()  # closes (and cancels) the streams if unfinished


async def _open(
    client: EngineClient, req: SamplingFields, specs: list[ChoiceSpec], opened: list[tuple[ChoiceSpec, RequestStream]]
) -> list[RequestStream]:
    """Submit every choice (each also goes into ``opened``); if one can't be queued, the others
    are cancelled."""
    streams: list[RequestStream] = []
    try:
        for spec in specs:
            streams.append(
                await client.submit(req.model, spec.input, spec.params, req.stream, keep_alive=req.keep_alive)
            )
            opened.append((spec, streams[-1]))
    except BaseException:
        for rs in streams:
            rs.close()
        raise
    return streams


async def _merge(
    specs: list[ChoiceSpec], streams: list[RequestStream]
) -> AsyncGenerator[tuple[ChoiceSpec, Delta | Done]]:
    """Every choice's events, in arrival order. Closing it cancels whatever still runs."""
    if len(streams) == 1:
        try:
            async for ev in streams[0]:
                yield specs[0], ev
        finally:
            streams[0].close()
        return
    queue: asyncio.Queue[tuple[ChoiceSpec, Delta | Done | BaseException]] = asyncio.Queue()

    async def pump(spec: ChoiceSpec, rs: RequestStream) -> None:
        try:
            async for ev in rs:
                await queue.put((spec, ev))
        except HearthError as e:
            await queue.put((spec, e))

    tasks = [asyncio.create_task(pump(s, rs)) for s, rs in zip(specs, streams, strict=True)]
    try:
        finished = 0
        while finished < len(streams):
            spec, got = await queue.get()
            if isinstance(got, BaseException):
                raise got
            ev = got
            if isinstance(ev, Done):
                finished += 1
            yield spec, ev
    finally:
        for t in tasks:
            t.cancel()
        for rs in streams:
            rs.close()


async def _sse(
    merged: AsyncGenerator[tuple[ChoiceSpec, Delta | Done]],
    first: tuple[ChoiceSpec, Delta | Done],
    shape: Shape,
    n: int,
    want_lp: bool,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    dones: list[tuple[ChoiceSpec, Done]] = []
    try:
        if isinstance(shape, ChatShape):
            for i in range(n):
                yield sse.event(shape.chunk(i, None, first=True))
        item = first
        while True:
            spec, ev = item
            if isinstance(ev, Delta):
                lp = ev.logprobs if want_lp else None
                if ev.text or lp or not ev.tool_calls:
                    yield sse.event(shape.chunk(spec.index, ev.text, logprobs=lp))
                if ev.tool_calls:  # each call whole, in one chunk after the text before it
                    yield sse.event(shape.chunk(spec.index, None, calls=ev.tool_calls))
            else:
                dones.append((spec, ev))
                yield sse.event(shape.chunk(spec.index, None, finish=ev.finish_reason, note=ev.note))
                if len(dones) == n:
                    if include_usage:
                        yield sse.event(shape.usage_chunk(usage(dones)))
                    yield sse.DONE
                    return
            item = await anext(merged)
    except HearthError as e:  # after the first byte an error can only be an in-band event
        yield sse.event(e.body())
    except StopAsyncIteration:
        yield sse.event(WorkerFailed("the stream ended without a result").body())
    finally:
        await merged.aclose()
