"""The one per-request layer around every API request: the shutdown gate, the status as sent,
the request counter and the access-log line.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware), so a streamed response counts as
in flight until its last byte and is logged when it ends, with its real duration. It looks only
at API traffic (``/v1/...``, Ollama's ``/api/...``); probes, metrics and admin pass through. It creates the request's
``Record`` (gateway/record.py), which the generation session fills in.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.access import logfmt, request_fields
from gateway.errors import Unavailable, error_response
from gateway.metrics import Metrics
from gateway.record import SCOPE_KEY, Record
from gateway.shutdown import Gate

access_log = logging.getLogger("hearth.access")


def is_api(scope: Scope) -> bool:
    """An HTTP request to an API (``/v1/...``, ``/api/...``), not a probe, metrics or admin call."""
    return bool(scope["type"] == "http" and scope["path"].startswith(("/v1/", "/api/")))


class RequestWrap:
    def __init__(self, app: ASGIApp, gate: Gate, metrics: Metrics) -> None:
        self.app = app
        self.gate = gate
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_api(scope):
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        record = Record()
        scope.setdefault("state", {})[SCOPE_KEY] = record
        status: int | None = None

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.gate.draining:
                err = Unavailable("the server is shutting down; retry on another instance", code="shutting_down")
                await error_response(err, scope["path"])(scope, receive, send_recording)
                return
            self.gate.inflight += 1
            try:
                await self.app(scope, receive, send_recording)
            finally:
                self.gate.inflight -= 1
        finally:
            code = status or 500
            self.metrics.requests.labels(record.model or "", scope["path"], str(code)).inc()
            fields: dict[str, Any] = {
                "method": scope["method"],
                "path": scope["path"],
                "status": code,
                "model": record.model,
            }
            fields.update(request_fields(record.generations))
            fields.update(record.fields)
            fields["duration"] = time.monotonic() - t0
            access_log.info("%s", logfmt(fields))
