"""Small pieces the gateway's pure ASGI middlewares share (metrics, access log, shutdown gate).

They are pure ASGI rather than Starlette's BaseHTTPMiddleware so a streamed response counts
until its last byte, and they only look at API traffic (``/v1/...``, Ollama's ``/api/...``)."""

from __future__ import annotations

from starlette.types import Message, Scope, Send


def is_api(scope: Scope) -> bool:
    """An HTTP request to an API (``/v1/...``, ``/api/...``), not a probe, metrics or admin call."""
    return bool(scope["type"] == "http" and scope["path"].startswith(("/v1/", "/api/")))


class StatusRecorder:
    """``send`` that remembers the response's status (None until the response starts)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
