"""Ollama's routes. They validate, translate and call the engine client; they never touch sockets.

``/api/chat`` and ``/api/generate`` stream NDJSON by default (one JSON object a line, the last
with ``done: true`` and the durations) or answer one object with ``stream: false``. An error
before the first line is a status with ``{"error": ...}``; after it, an ``{"error": ...}`` line.
An empty ``messages`` (or ``prompt``) only loads the model, or with ``keep_alive: 0`` unloads
it, as in Ollama.

They call ``EngineClient.submit`` and read the ``RequestStream`` directly: the gateway has no
API-neutral generation session yet. When it does, ``_generate`` is the one function to move onto
it; everything else here is schemas and formatting.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.admin import describe
from gateway.bodies import read_json, validate
from gateway.client import EngineClient, RequestStream
from gateway.disconnect import GONE, unless_gone
from gateway.embeddings import embed
from gateway.errors import HearthError, InvalidRequest, ModelNotFound, Unavailable, WorkerFailed
from gateway.ollama import catalog
from gateway.ollama.facts import facts
from gateway.ollama.schemas import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, Options, ShowRequest
from gateway.ollama.translate import (
    Shape,
    chat_input,
    check_request,
    generate_input,
    params_for,
    resolve_name,
)
from gateway.openai.translate import ChoiceSpec
from gateway.supervisor import Supervisor
from shared.config import ModelConfig
from shared.protocol import Delta, WorkerState
from shared.units import parse_duration

# The Ollama API version whose docs/api.md Hearth follows; clients gate features on it
# (VS Code Copilot Chat asks for at least 0.6.4).
OLLAMA_VERSION = "0.13.0"
NDJSON = "application/x-ndjson"
RUNNING = "Ollama is running"


class Forbidden(HearthError):
    status = 403
    type = "invalid_request_error"
    code = "no_registry"


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _client(request: Request) -> EngineClient:
    return request.app.state.client


def _model(request: Request, name: str, kind: str | None = None) -> ModelConfig:
    cfg = resolve_name(_client(request).config, name)
    request.scope.setdefault("state", {})["model"] = cfg.name if cfg else "unknown"
    if cfg is None:
        raise ModelNotFound(f"model '{name}' not found: Hearth serves only the models in its configuration")
    if kind == "chat" and cfg.kind != "chat":
        raise InvalidRequest(f"'{name}' is an embedding model: it does not support chat or generate", param="model")
    if kind == "embedding" and cfg.kind != "embedding":
        raise InvalidRequest(f"'{name}' is a chat model: it does not support embeddings", param="model")
    return cfg


def context_of(client: EngineClient, cfg: ModelConfig) -> int:
    """The model's context: what a worker reported, else what its files say."""
    live = [w.context_length for w in client.pool.of_model(cfg.name) if w.context_length]
    return live[0] if live else facts(cfg).context_length


# -- the server and its models --------------------------------------------------------------


async def root(request: Request) -> Response:
    return Response(RUNNING, media_type="text/plain; charset=utf-8")


async def version(request: Request) -> Response:
    return _json({"version": OLLAMA_VERSION})


async def tags(request: Request) -> Response:
    models = _client(request).config.models
    return _json({"models": [catalog.tag(cfg, facts(cfg)) for cfg in models]})


async def show(request: Request) -> Response:
    client = _client(request)
    req = validate(ShowRequest, await read_json(request, client.config.server.body_limit, any_type=True))
    cfg = _model(request, req.model_name)
    return _json(catalog.show(cfg, facts(cfg), context_of(client, cfg)))


async def ps(request: Request) -> Response:
    client = _client(request)
    sup: Supervisor = request.app.state.supervisor
    out = []
    for cfg in client.config.models:
        if client.pool.model_state(cfg.name) in ("unloaded", "failed"):
            continue
        out.append(catalog.running(cfg, facts(cfg), describe(sup, cfg.name), context_of(client, cfg)))
    return _json({"models": out})


async def no_registry(request: Request) -> Response:
    """pull, push, create, copy, delete, blobs: Hearth has no model registry."""
    what = request.url.path.removeprefix("/api/").split("/")[0]
    if request.method == "HEAD":  # HEAD /api/blobs/DIGEST: no such blob (and no body)
        return Response(status_code=404)
    raise Forbidden(
        f"{what}: Hearth serves only the models configured in hearth.toml; it has no registry to {what} "
        "models (add a [[models]] entry instead)"
    )


# -- generation -----------------------------------------------------------------------------


async def chat(request: Request) -> Response:
    t0 = time.perf_counter()
    client = _client(request)
    req = validate(ChatRequest, await read_json(request, client.config.server.body_limit, any_type=True))
    cfg = _model(request, req.model, "chat")
    check_request(req, cfg, images=any(m.images for m in req.messages))
    shape = Shape(req.model, chat=True, t0=t0)
    if not req.messages:
        return await _load_or_unload(request, cfg, req.keep_alive, shape)
    params = params_for(req, cfg, context_of(client, cfg))
    return await _generate(request, client, cfg, chat_input(req), params, req.stream, req.keep_alive, shape)


async def generate(request: Request) -> Response:
    t0 = time.perf_counter()
    client = _client(request)
    req = validate(GenerateRequest, await read_json(request, client.config.server.body_limit, any_type=True))
    cfg = _model(request, req.model, "chat")
    check_request(req, cfg, images=bool(req.images))
    shape = Shape(req.model, chat=False, t0=t0)
    inp = generate_input(req)
    if not req.prompt and not req.system:
        return await _load_or_unload(request, cfg, req.keep_alive, shape)
    params = params_for(req, cfg, context_of(client, cfg))
    return await _generate(request, client, cfg, inp, params, req.stream, req.keep_alive, shape)


async def _load_or_unload(request: Request, cfg: ModelConfig, keep_alive: float | str | None, shape: Shape) -> Response:
    """Ollama's empty request: load the model and wait until it is ready (``done_reason:
    "load"``), or with ``keep_alive`` 0 unload it (``"unload"``)."""
    sup: Supervisor = request.app.state.supervisor
    entry = sup.client.pool.models[cfg.name]
    seconds = None if keep_alive is None else parse_duration(keep_alive)
    if seconds == 0:
        if cfg.replicas:
            await sup.unload(cfg.name, "keep_alive 0")
        return _json(shape.status("unload"))
    entry.keep_alive = seconds
    timeout = sup.config.server.request_wait
    deadline = time.monotonic() + timeout
    await sup.load(cfg.name, timeout)
    while not any(w.state is WorkerState.READY and w.connected for w in sup.client.pool.of_model(cfg.name)):
        if entry.failed:
            raise Unavailable(f"the model '{cfg.name}' failed to start: {entry.failed}", code="model_failed")
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unavailable(f"the model '{cfg.name}' did not become ready in time")
        await sup.client.pool.wait_change(left)
    sup.client.pool.touch(cfg.name)
    return _json(shape.status("load"))


async def _generate(
    request: Request,
    client: EngineClient,
    cfg: ModelConfig,
    inp: dict[str, Any],
    params: dict[str, Any],
    stream: bool,
    keep_alive: float | str | None,
    shape: Shape,
) -> Response:
    """One generation: a single object, or NDJSON lines once the first token is there."""
    generations: list[tuple[ChoiceSpec, RequestStream]] = request.scope["state"].setdefault("generations", [])
    spec = ChoiceSpec(0, 0, inp, params)
    want_lp = "logprobs" in params

    async def submit() -> RequestStream:
        rs = await client.submit(cfg.name, inp, params, stream, keep_alive=keep_alive)
        generations.append((spec, rs))
        return rs

    if not stream:

        async def whole() -> dict[str, Any]:
            rs = await submit()
            try:
                r = await rs.collect()
            finally:
                rs.close()
            return shape.final(r.done, r.text, r.tool_calls, r.logprobs if want_lp else None)

        out = await unless_gone(request, whole())
        return Response(status_code=499) if out is GONE else _json(out)

    async def opening() -> tuple[RequestStream, AsyncIterator[Any], Any]:
        rs = await submit()
        events = aiter(rs)
        try:  # an error before the first token is still a plain JSON error response
            return rs, events, await anext(events)
        except BaseException:
            rs.close()
            raise

    opened = await unless_gone(request, opening())
    if opened is GONE:
        return Response(status_code=499)
    rs, events, first = opened
    return StreamingResponse(_lines(rs, events, first, shape, want_lp), media_type=NDJSON)


async def _lines(
    rs: RequestStream, events: AsyncIterator[Any], first: Any, shape: Shape, want_lp: bool
) -> AsyncIterator[bytes]:
    try:
        ev = first
        while True:
            if isinstance(ev, Delta):
                yield orjson.dumps(shape.chunk(ev, want_lp)) + b"\n"
            else:
                yield orjson.dumps(shape.final(ev)) + b"\n"
                return
            ev = await anext(events)
    except HearthError as e:  # after the first line an error can only be an in-band line
        yield orjson.dumps({"error": e.message}) + b"\n"
    except StopAsyncIteration:
        yield orjson.dumps({"error": WorkerFailed("the stream ended without a result").message}) + b"\n"
    finally:
        rs.close()


# -- embeddings -----------------------------------------------------------------------------


def _embed_options(options: Options | None, cfg: ModelConfig, context: int) -> None:
    """An embedding model has no sampling: only ``num_ctx`` (within its limit) is accepted."""
    if options is None:
        return
    for key, value in options.model_dump(exclude_none=True).items():
        if key == "num_ctx":
            if context and value > context:
                raise InvalidRequest(
                    f"options.num_ctx: {value} is more than the {context}-token limit of '{cfg.name}'",
                    param="options.num_ctx",
                )
            continue
        raise InvalidRequest(
            f"options.{key}: '{cfg.name}' is an embedding model: it has no {key}", param=f"options.{key}"
        )


async def api_embed(request: Request) -> Response:
    t0 = time.perf_counter()
    client = _client(request)
    req = validate(EmbedRequest, await read_json(request, client.config.server.body_limit, any_type=True))
    cfg = _model(request, req.model, "embedding")
    _embed_options(req.options, cfg, context_of(client, cfg))
    inputs: list[Any] = [req.input] if isinstance(req.input, str) else list(req.input)
    params = {"truncate": req.truncate, "dimensions": req.dimensions}
    out = await embed(request, client, cfg.name, inputs, params, req.keep_alive)
    if out is None:
        return Response(status_code=499)
    wall = time.perf_counter() - t0
    body = {
        "model": req.model,
        "embeddings": out.vectors,
        "total_duration": int(wall * 1e9),
        "load_duration": 0,
        "prompt_eval_count": out.usage.get("prompt_tokens", 0),
    }
    return _json(body)


async def api_embeddings(request: Request) -> Response:
    client = _client(request)
    req = validate(EmbeddingsRequest, await read_json(request, client.config.server.body_limit, any_type=True))
    cfg = _model(request, req.model, "embedding")
    _embed_options(req.options, cfg, context_of(client, cfg))
    out = await embed(request, client, cfg.name, [req.prompt], {"truncate": False}, req.keep_alive)
    if out is None:
        return Response(status_code=499)
    return _json({"embedding": out.vectors[0]})


def routes() -> list[Route]:
    """Ollama's routes, mounted on Hearth's port when ``[server] ollama = true`` (and on the
    ``ollama_port`` listener)."""
    registry = ["POST", "DELETE", "HEAD"]
    return [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/api/version", version, methods=["GET", "HEAD"]),
        Route("/api/tags", tags, methods=["GET", "HEAD"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/ps", ps, methods=["GET", "HEAD"]),
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/embed", api_embed, methods=["POST"]),
        Route("/api/embeddings", api_embeddings, methods=["POST"]),
        *(Route(f"/api/{p}", no_registry, methods=registry) for p in ("pull", "push", "create", "copy", "delete")),
        Route("/api/blobs/{digest:path}", no_registry, methods=registry),
    ]
