"""Ollama's routes: validate (schemas), translate into a choice (translate), run it on the
generation session, format (format: ``Shape``, ``NdjsonStream``). No sockets, queues or
keep-alive logic here.

``/api/chat`` and ``/api/generate`` stream NDJSON by default (one JSON object a line, the last
with ``done: true`` and the durations) or answer one object with ``stream: false``. An error
before the first line is a status with ``{"error": ...}``; after it, an ``{"error": ...}`` line.
An empty ``messages`` (or ``prompt``) only loads the model, or with ``keep_alive: 0`` unloads
it, as in Ollama.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import media
from gateway.admin import describe
from gateway.bodies import read_json, validate
from gateway.embeddings import embed
from gateway.errors import HearthError, InvalidRequest, ModelNotFound
from gateway.models import ModelState
from gateway.ollama import catalog
from gateway.ollama.facts import facts
from gateway.ollama.schemas import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, Options, ShowRequest
from gateway.record import Record
from gateway.ollama.format import NdjsonStream, Shape
from gateway.ollama.translate import (
    chat_input,
    check_request,
    generate_input,
    params_for,
    resolve_name,
)
from gateway.session import Choice, Generations
from gateway.supervisor import Supervisor
from shared.config import ModelConfig

# The Ollama API version whose docs/api.md Hearth follows; clients gate features on it.
OLLAMA_VERSION = "0.13.0"
RUNNING = "Ollama is running"


class Forbidden(HearthError):
    status = 403
    type = "invalid_request_error"
    code = "no_registry"


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _generations(request: Request) -> Generations:
    return request.app.state.generations


async def _body(request: Request, gens: Generations) -> Any:
    return await read_json(request, gens.config.server.body_limit, any_type=True)


def _model(request: Request, gens: Generations, name: str, kind: str | None = "chat") -> ModelConfig:
    """The model an Ollama name means (``:latest`` or not), recorded for the log; 404 in
    Ollama's words, 400 when it is of the other kind."""
    cfg = resolve_name(gens.config, name)
    if cfg is None:
        Record.of(request).model = "unknown"
        raise ModelNotFound(f"model '{name}' not found: Hearth serves only the models in its configuration")
    if kind is None:
        return cfg
    try:
        return gens.model(request, cfg.name, kind=kind)
    except InvalidRequest:
        what = "chat or generate" if kind == "chat" else "embeddings"
        raise InvalidRequest(f"'{name}' does not support {what}: it is a {cfg.kind} model", param="model") from None


def context_of(gens: Generations, cfg: ModelConfig) -> int:
    """The model's context: what a worker reported, else what its files say."""
    live = [w.context_length for w in gens.models.pool.of_model(cfg.name) if w.context_length]
    return live[0] if live else facts(cfg).context_length


# -- the server and its models --------------------------------------------------------------


async def root(request: Request) -> Response:
    return Response(RUNNING, media_type="text/plain; charset=utf-8")


async def version(request: Request) -> Response:
    return _json({"version": OLLAMA_VERSION})


async def tags(request: Request) -> Response:
    return _json({"models": [catalog.tag(cfg, facts(cfg)) for cfg in _generations(request).config.models]})


async def show(request: Request) -> Response:
    gens = _generations(request)
    req = validate(ShowRequest, await _body(request, gens))
    cfg = _model(request, gens, req.model_name, kind=None)
    return _json(catalog.show(cfg, facts(cfg), context_of(gens, cfg)))


async def ps(request: Request) -> Response:
    gens = _generations(request)
    sup: Supervisor = request.app.state.supervisor
    out = []
    for model in gens.models:
        if model.state in (ModelState.UNLOADED, ModelState.FAILED):
            continue
        cfg = model.cfg
        out.append(catalog.running(cfg, facts(cfg), describe(sup, cfg.name), context_of(gens, cfg)))
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
    gens = _generations(request)
    req = validate(ChatRequest, await _body(request, gens))
    cfg = _model(request, gens, req.model)
    images = sum(len(m.images or []) for m in req.messages)
    check_request(req, cfg, images, _policy(gens, cfg), catalog.thinks(facts(cfg)))
    headers = media.record(request, images, gens.metrics)
    shape = Shape(req.model, chat=True, t0=t0)
    if not req.messages:
        return await _load_or_unload(request, cfg, req.keep_alive, shape)
    params = params_for(req, cfg, context_of(gens, cfg))
    choice = Choice(0, 0, chat_input(req), params)
    return await _generate(request, gens, cfg, choice, req.stream, req.keep_alive, shape, headers)


async def generate(request: Request) -> Response:
    t0 = time.perf_counter()
    gens = _generations(request)
    req = validate(GenerateRequest, await _body(request, gens))
    cfg = _model(request, gens, req.model)
    images = len(req.images or [])
    check_request(req, cfg, images, _policy(gens, cfg), catalog.thinks(facts(cfg)))
    headers = media.record(request, images, gens.metrics)
    shape = Shape(req.model, chat=False, t0=t0)
    inp = generate_input(req)
    if not req.prompt and not req.system:
        return await _load_or_unload(request, cfg, req.keep_alive, shape)
    params = params_for(req, cfg, context_of(gens, cfg))
    return await _generate(request, gens, cfg, Choice(0, 0, inp, params), req.stream, req.keep_alive, shape, headers)


async def _load_or_unload(request: Request, cfg: ModelConfig, keep_alive: float | None, shape: Shape) -> Response:
    """Ollama's empty request: load the model and wait until it is ready (``done_reason:
    "load"``), or with ``keep_alive`` 0 unload it (``"unload"``); as an admin's load and unload."""
    sup: Supervisor = request.app.state.supervisor
    model = sup.models[cfg.name]
    if keep_alive == 0:
        if cfg.replicas:
            await sup.unload(cfg.name, "keep_alive 0")
        return _json(shape.status("unload"))
    timeout = sup.config.server.request_wait
    deadline = time.monotonic() + timeout
    model.requested(keep_alive)
    if cfg.replicas:
        await sup.load(cfg.name, timeout)
    await sup.models.wait_until(
        model,
        lambda: True if model.state is ModelState.READY else None,
        deadline,
        f"the model '{cfg.name}' did not become ready",
    )
    model.touch()
    return _json(shape.status("load"))


async def _generate(
    request: Request,
    gens: Generations,
    cfg: ModelConfig,
    choice: Choice,
    stream: bool,
    keep_alive: float | None,
    shape: Shape,
    headers: dict[str, str],
) -> Response:
    want_lp = "logprobs" in choice.params
    if not stream:
        (r,) = await gens.collect(request, cfg, [choice], keep_alive)
        thinking = "".join(d.reasoning for d in r.deltas)
        body = shape.final(r.done, r.text, r.tool_calls, r.logprobs if want_lp else None, thinking)
        return Response(orjson.dumps(body), media_type="application/json", headers=headers)
    fmt = NdjsonStream(shape, want_lp)
    fmt.headers.update(headers)
    return await gens.stream(request, cfg, [choice], fmt, keep_alive)


def _policy(gens: Generations, cfg: ModelConfig) -> str:
    """The model's image policy (gateway.media); Ollama's API defaults to ``reject``, as OpenAI's."""
    return media.policy_for(gens.config, {"model": cfg.name}, "openai")


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
    gens = _generations(request)
    req = validate(EmbedRequest, await _body(request, gens))
    cfg = _model(request, gens, req.model, kind="embedding")
    _embed_options(req.options, cfg, context_of(gens, cfg))
    inputs: list[Any] = [req.input] if isinstance(req.input, str) else list(req.input)
    params = {"truncate": req.truncate, "dimensions": req.dimensions}
    out = await embed(request, gens, cfg.name, inputs, params, req.keep_alive)
    body = {
        "model": req.model,
        "embeddings": out.vectors,
        "total_duration": int((time.perf_counter() - t0) * 1e9),
        "prompt_eval_count": out.usage.get("prompt_tokens", 0),
    }
    return _json(body)


async def api_embeddings(request: Request) -> Response:
    gens = _generations(request)
    req = validate(EmbeddingsRequest, await _body(request, gens))
    cfg = _model(request, gens, req.model, kind="embedding")
    _embed_options(req.options, cfg, context_of(gens, cfg))
    out = await embed(request, gens, cfg.name, [req.prompt], {"truncate": False}, req.keep_alive)
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
