"""Probes: /health is the gateway's own liveness (no worker round trip); /ready says whether
every preloaded model has a ready worker, with every model's workers and states either way."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response


async def health(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    pool = request.app.state.client.pool
    ok = pool.is_ready()
    body = {"ready": ok, "models": {name: pool.describe(name) for name in pool.models}}
    return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")
