"""OpenAI endpoints: validate (schemas), translate into choices (translate), run them on the
generation session, format (format). They never touch sockets, queues or keep-alives.

A request becomes one generation per choice (``n`` per prompt); streaming merges the choices'
events as they come.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import media
from gateway.bodies import read_json, validate
from gateway.openai.format import ChunkStream, response
from gateway.openai.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from gateway.openai.translate import (
    ChatShape,
    CompletionShape,
    Shape,
    chat_input,
    completion_inputs,
    expand,
    omitted_media,
    params_for,
)
from gateway.session import Generations


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _generations(request: Request) -> Generations:
    return request.app.state.generations


async def list_models(request: Request) -> Response:
    models = _generations(request).models
    data = []
    for model in models:
        info = models.describe(model)
        data.append(
            {
                "id": model.name,
                "object": "model",
                "created": 0,
                "owned_by": "hearth",
                "state": info["state"],
                "detail": info["detail"],
                "workers": info["workers"],
                "path": model.cfg.path,
            }
        )
    return _json({"object": "list", "data": data})


async def chat_completions(request: Request) -> Response:
    gens = _generations(request)
    data = await read_json(request, gens.config.server.body_limit)
    req = validate(ChatCompletionRequest, data, media.context(gens.config, data, "openai"))
    return await _generate(request, gens, req, [chat_input(req)], ChatShape, omitted_media(req))


async def completions(request: Request) -> Response:
    gens = _generations(request)
    req = validate(CompletionRequest, await read_json(request, gens.config.server.body_limit))
    return await _generate(request, gens, req, completion_inputs(req), CompletionShape)


async def _generate(
    request: Request,
    gens: Generations,
    req: SamplingFields,
    inputs: list[dict[str, Any]],
    shape_cls: type[Shape],
    omitted: int = 0,
) -> Response:
    cfg = gens.model(request, req.model)
    headers = media.record(request, omitted, gens.metrics)  # images/documents replaced by a note
    params = params_for(req, cfg)
    choices = expand(inputs, params, req.n)
    want_lp = "logprobs" in params
    if not req.stream:
        results = await gens.collect(request, cfg, choices, req.keep_alive)
        return _json(response(shape_cls, req.model, results, want_lp), headers=headers)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    fmt = ChunkStream(shape_cls, req.model, len(choices), want_lp, include_usage)
    fmt.headers.update(headers)
    return await gens.stream(request, cfg, choices, fmt, req.keep_alive)
