"""``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``: validate (schemas),
translate, run on the generation session, format (format). They never touch sockets, queues or
keep-alives: the session does admission, dispatch, keep-alives while the first token is slow,
disconnects and re-dispatch, and raises an error found before the first event, for a plain JSON
error; after it, the stream's ``error`` event and ``response.failed``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import media
from gateway.bodies import read_json, validate
from gateway.errors import HearthError, InvalidRequest, NotFound
from gateway.responses.format import ResponseBuilder, ResponsesStream
from gateway.responses.schemas import ResponsesRequest
from gateway.responses.store import ResponseStore
from gateway.record import Record
from gateway.responses.translate import echo, output_messages, prepare
from gateway.session import Choice, Generations

log = logging.getLogger("hearth.responses")
LEFT_OUT_HEADER = "x-hearth-tools-left-out"


def _generations(request: Request) -> Generations:
    return request.app.state.generations


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
    gens = _generations(request)
    body = await read_json(request, gens.config.server.body_limit)
    req = validate(ResponsesRequest, body, media.context(gens.config, body, "responses"))
    cfg = gens.model(request, req.model)
    store = _store(request)
    previous = store.conversation(req.previous_response_id) if req.previous_response_id is not None else None
    prep = prepare(req, cfg, previous)
    headers = media.record(request, prep.omitted, gens.metrics)  # images/files replaced by a note
    if prep.left_out:
        headers[LEFT_OUT_HEADER] = ", ".join(prep.left_out)
        log.info("tools left out of the prompt (Hearth can't run them): %s", ", ".join(prep.left_out))
    builder = ResponseBuilder(echo(req, body.get("tools"), cfg), prep.namespaces, logprobs=req.logprobs_wanted())
    choices = [Choice(0, 0, prep.input, prep.params, affinity=prep.affinity)]

    def keep(builder: ResponseBuilder) -> None:
        if req.store:
            store.put(builder.response(), [*prep.conversation, *output_messages(builder.output)])

    try:
        if req.stream:
            fmt = ResponsesStream(builder, headers, finished=keep, rename=_named)
            return await gens.stream(request, cfg, choices, fmt, req.keep_alive)
        (result,) = await gens.collect(request, cfg, choices, req.keep_alive)
    except HearthError as e:
        raise _named(e) from None
    for delta in result.deltas:
        builder.delta(delta)
    builder.done(result.done)
    keep(builder)
    return _json(builder.response(), headers=headers)


def _response_id(request: Request) -> str:
    Record.of(request).route = "/v1/responses/{id}"  # one metrics label for all ids
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
