"""Optional API key: ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` on every API path.

A pure ASGI middleware (no response buffering, so streaming is untouched); the probes stay
open so a supervisor needs no key, and so do the paths the app adds to ``open_paths`` (the
console's page and assets, which hold no data: the page asks for the key and sends it).
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import Unauthorized, error_response

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, key: str, open_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.key = key.encode()
        self.open_paths = OPEN_PATHS | open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._allowed(scope):
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
