"""Probes: /health is the gateway's own liveness (no worker round trip); /ready says whether
every preloaded model has a ready worker, with every model's workers and states either way.
/ready turns 503 as soon as a shutdown starts, so a load balancer stops sending traffic."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response


async def health(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    models = request.app.state.models
    shutting_down = request.app.state.gate.draining
    ok = models.is_ready() and not shutting_down
    body = {"ready": ok, "models": {m.name: models.describe(m) for m in models}}
    if shutting_down:
        body["status"] = "shutting down"
    if request.app.state.warnings:  # e.g. listening off loopback without an API key (gateway/origins.py)
        body["warnings"] = request.app.state.warnings
    return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")
