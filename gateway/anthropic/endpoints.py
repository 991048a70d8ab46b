"""Anthropic Messages API endpoints: validate (schemas), translate, run on the generation
session, format (format). They never touch sockets, queues or keep-alives.

Errors take Anthropic's format on these paths (gateway/errors.py), and a too-long prompt is
said the way Anthropic says it, before the stream starts and in-band alike.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.anthropic.format import EventStream, anthropic_error, message
from gateway.anthropic.schemas import CountTokensRequest, MessagesRequest
from gateway.anthropic.translate import omitted_media, params_for, prompt_input
from gateway import media
from gateway.bodies import read_json, validate
from gateway.errors import HearthError, request_id
from gateway.session import Choice, Generations


def _generations(request: Request) -> Generations:
    return request.app.state.generations


async def messages(request: Request) -> Response:
    gens = _generations(request)
    data = await read_json(request, gens.config.server.body_limit)
    req = validate(MessagesRequest, data, media.context(gens.config, data, "anthropic"))
    cfg = gens.model(request, req.model)
    inp, params = prompt_input(req, cfg), params_for(req, cfg)
    warned = media.record(request, omitted_media(req), gens.metrics)  # images/documents replaced by a note
    choices = [Choice(0, 0, inp, params)]
    try:
        if req.stream:
            fmt = EventStream(req.model)
            fmt.headers.update(warned)
            return await gens.stream(request, cfg, choices, fmt, req.keep_alive)
        (result,) = await gens.collect(request, cfg, choices, req.keep_alive)
    except HearthError as e:
        raise anthropic_error(e) from None
    body = orjson.dumps(message(req.model, result))
    return Response(body, media_type="application/json", headers={"request-id": request_id(), **warned})


async def count_tokens(request: Request) -> Response:
    """``{"input_tokens": N}``: the worker counts the very input ``/v1/messages`` would send."""
    gens = _generations(request)
    data = await read_json(request, gens.config.server.body_limit)
    req = validate(CountTokensRequest, data, media.context(gens.config, data, "anthropic"))
    cfg = gens.model(request, req.model)
    warned = media.record(request, omitted_media(req), gens.metrics)
    n = await gens.count_tokens(request, cfg, prompt_input(req, cfg))
    headers = {"request-id": request_id(), **warned}
    return Response(orjson.dumps({"input_tokens": n}), media_type="application/json", headers=headers)
