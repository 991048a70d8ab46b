"""Optional API key: ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` on every API path.

A pure ASGI middleware (no response buffering, so streaming is untouched); the probes stay
open so a supervisor needs no key.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import Unauthorized, error_response

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        err = Unauthorized("a valid API key is required (Authorization: Bearer KEY or x-api-key)")
        await error_response(err, scope["path"])(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return bool(given) and hmac.compare_digest(given, self.key)
