"""The console's routes: the page and its two assets (open, like the probes: they hold no data),
and the one server-sent-events stream that feeds it (behind the API key like the admin API).

    GET /  (or /console)       the page; / is Ollama's when ``[server] ollama`` is on
    GET /console/console.js    its script
    GET /console/console.css   its style sheet
    GET /console/events        SSE: every second, the models (as GET /admin/models) and the
                               Live panel's figures (gateway/console/live.py)

The page calls only same-origin URLs, which the browser guard (gateway/origins.py) lets through;
its answers carry a Content-Security-Policy that allows nothing but this origin and no framing.
The event stream, which holds a connection and shows the server's state, is refused to a
request from another page (an untrusted ``Origin``; without one, ``Sec-Fetch-Site: cross-site``
or ``same-site``, which is what a no-cors GET from a page on another port of this host sends)
even though it is a GET: without CORS such a page could not read it, but it need not hold it open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway import admin
from gateway.console.live import INTERVAL, Window, read
from gateway.errors import Forbidden
from gateway.metrics import Metrics
from gateway.origins import Policy
from gateway.sse import KEEPALIVE
from gateway.supervisor import Supervisor

log = logging.getLogger("hearth.console")
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _asset(name: str) -> bytes:
    return (resources.files("gateway.console") / "static" / name).read_bytes()


def open_paths(ollama: bool) -> frozenset[str]:
    """The console paths that need no API key: the page and its assets (the data behind them,
    /console/events and /admin/*, do)."""
    page = {"/console"} if ollama else {"/", "/console"}
    return frozenset(page | {f"/console/{name}" for name in ASSETS})


def model_row(sup: Supervisor, name: str) -> dict[str, Any]:
    """A model as GET /admin/models describes it, with what the page shows beside that: its kind
    (the playground lists chat models), context length and restarts."""
    model = sup.models[name]
    return {
        **admin.describe(sup, name),
        **sup.models.context(model),
        "kind": model.cfg.kind,
        "restarts": sup.restarts.get(name, 0),
    }


class Console:
    """The console's routes, sharing one ``Window`` of readings among every open stream."""

    def __init__(self, metrics: Metrics, policy: Policy, ollama: bool, key_required: bool) -> None:
        self.metrics = metrics
        self.policy = policy
        self.ollama = ollama
        self.key_required = key_required  # the page asks for the key before its first call (no 401 to see)
        self.window = Window()
        self.snapshot: dict[str, Any] | None = None

    def routes(self) -> list[Route]:
        pages = ["/console"] if self.ollama else ["/", "/console"]
        return [
            *(Route(p, self.page, methods=["GET", "HEAD"]) for p in pages),
            *(Route(f"/console/{n}", self.asset, methods=["GET", "HEAD"]) for n in ASSETS),
            Route("/console/events", self.events, methods=["GET"]),
        ]

    async def page(self, request: Request) -> Response:
        html = _asset("index.html")
        if self.key_required:
            html = html.replace(b"<body>", b'<body data-key-required="true">', 1)
        return Response(html, media_type="text/html", headers=SECURITY_HEADERS)

    async def asset(self, request: Request) -> Response:
        name = request.url.path.rsplit("/", 1)[1]
        return Response(_asset(name), media_type=ASSETS[name], headers=SECURITY_HEADERS)

    def tick(self) -> dict[str, Any]:
        """The Live figures, with a new reading if one is due: every open stream asks each second,
        the first one reads and derives (a few ms on the loop), the others share its answer."""
        now = time.monotonic()
        if self.window.due(now) or self.snapshot is None:
            self.window.add(read(self.metrics.registry.collect(), now))
            self.snapshot = self.window.snapshot()
        return self.snapshot

    def refusal(self, request: Request) -> str | None:
        origin = request.headers.get("origin")
        if origin is not None and not self.policy.trusts(origin, request.headers.get("host")):
            return f"the console's event stream is not served to the web page origin {origin!r}"
        site = request.headers.get("sec-fetch-site", "").lower()
        if origin is None and site in ("cross-site", "same-site"):
            # a no-cors GET sends no Origin; same-site includes a page on another port of this host
            return f"the console's event stream is not served to another page (Sec-Fetch-Site: {site})"
        return None

    async def events(self, request: Request) -> Response:
        problem = self.refusal(request)
        if problem:
            log.warning("refused %s %s: %s", request.method, request.url.path, problem)
            raise Forbidden(problem, code="origin_not_allowed")
        return StreamingResponse(
            self._stream(request),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _stream(self, request: Request) -> AsyncIterator[bytes]:
        sup = request.app.state.supervisor
        gate = request.app.state.gate
        yield KEEPALIVE  # the headers and a first byte at once: the page shows it is connected
        while not gate.draining:  # a shutdown ends the stream, so it never holds the drain up
            body = {"models": [model_row(sup, n) for n in sup.runners], "live": self.tick()}
            yield b"data: " + orjson.dumps(body) + b"\n\n"
            await asyncio.sleep(INTERVAL)
        yield b'event: end\ndata: {"reason": "shutting down"}\n\n'
