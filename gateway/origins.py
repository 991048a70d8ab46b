"""What a web page may do to a local Hearth: the Host allow-list, the Origin check and CORS.

Any page a user visits can send requests to ``http://127.0.0.1:8080``. Three holes follow
unless the server closes them (Ollama shipped all three, CVE-2024-28224):

- **DNS rebinding.** A page on ``evil.example`` re-points its own name at 127.0.0.1; the browser
  then treats Hearth as same-origin with the page and lets it read every answer. The request's
  ``Host`` still says ``evil.example``, so only requests whose Host is a loopback name or address
  *of the listening port* (or a name in ``[server] allowed_hosts``) are served. When the server
  is bound off loopback on purpose, IP literals (which no rebinding can produce) and the
  configured names are served. Starlette's ``TrustedHostMiddleware`` matches the configured
  names (wildcards as ``*.example.com``).
- **Cross-site writes.** A plain HTML form can POST with no preflight (an admin unload, a
  ``text/plain`` body), and the browser sends it whatever CORS says about reading the answer.
  So every request that changes state or costs work (every method but GET and HEAD: admin
  load/unload, generation on every API, token counting) that carries a foreign ``Origin``, or
  ``Sec-Fetch-Site: cross-site`` with no Origin, is refused with 403 before any work is done.
  Requests without those headers (curl, SDKs, agents) never see the check.
- **CORS.** Off by default; ``[server] cors_origins`` lists the browser apps the user trusts (or
  ``"*"``, logged loudly). Starlette's ``CORSMiddleware`` answers their preflights (204 here) and
  adds the headers a page needs to read a streamed answer.

The three sit in one ASGI layer, ``BrowserGuard``: Host check, then the Origin check, then CORS,
then the app. It is pure ASGI, so streams pass through untouched, and self-contained, so it can be
the outermost layer. Refusals use the API's own error format (``gateway.errors``) and are logged
here, since the access log sits inside.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import Forbidden, error_response
from shared.config import ConfigError, ServerConfig

log = logging.getLogger("hearth.origins")

SAFE_METHODS = frozenset({"GET", "HEAD"})
CORS_METHODS = ("GET", "POST", "OPTIONS")
# What browser clients of both APIs send (the official JS SDKs add their x-stainless-* headers,
# Anthropic's also anthropic-dangerous-direct-browser-access). CORSMiddleware adds the
# CORS-safelisted ones (Accept, Content-Type, ...).
CORS_HEADERS = (
    "authorization",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-organization",
    "openai-project",
    "x-request-id",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
)
CORS_EXPOSE = ("request-id", "retry-after", "x-request-id")
LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback_address(host: str) -> bool:
    """A loopback name or address (``localhost``, ``127.x``, ``::1``, with or without brackets)."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Policy:
    """Who may call: built once from ``[server]`` (``policy``)."""

    on_loopback: bool  # bound to a loopback address (the default)
    allowed_hosts: tuple[str, ...]  # [server] allowed_hosts: names served on any port
    cors_origins: tuple[str, ...]  # [server] cors_origins, "*" expanded into any_origin
    any_origin: bool

    def host_problem(self, host: str | None, port: int | None) -> str | None:
        """Why a request's ``Host`` header is refused (None: served) on a server listening on
        ``port``. Configured names are left to ``TrustedHostMiddleware`` (the caller)."""
        if not host:
            return "the request has no Host header"
        try:
            parts = urlsplit("//" + host)
            name, given = parts.hostname or "", parts.port
        except ValueError:
            return f"the Host header {host!r} is not valid"
        if not name:
            return f"the Host header {host!r} is not valid"
        if is_loopback_address(name):
            if port is not None and (given or 80) != port:
                return f"Host {host!r} names another port than this server's ({port})"
            return None
        if _ip_literal(name) and not self.on_loopback:
            return None  # bound off loopback on purpose: a rebinding page cannot send an IP literal
        return f"Host {host!r} is not this server (a DNS-rebinding page sends its own name)"

    def trusts(self, origin: str, host: str | None) -> bool:
        """Whether a page from ``origin`` may change state: Hearth's own origin (same host and
        port as the request's Host, which the Host check vouched for) or a configured one."""
        if self.any_origin or origin in self.cors_origins:
            return True
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == (host or "").lower()

    def origin_problem(self, method: str, headers: Headers) -> str | None:
        """Why a request is refused as cross-site (None: served). Safe methods are never refused:
        they change nothing, and without CORS headers the page cannot read their answers."""
        if method in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is not None:
            if self.trusts(origin, headers.get("host")):
                return None
            return (
                f"requests from the web page origin {origin!r} are not allowed; "
                "list it in [server] cors_origins to let that page call Hearth"
            )
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            return "cross-site requests from a web page are not allowed (Sec-Fetch-Site: cross-site)"
        return None


def policy(server: ServerConfig) -> Policy:
    origins = [server.cors_origins] if isinstance(server.cors_origins, str) else list(server.cors_origins)
    return Policy(
        on_loopback=is_loopback_address(server.host),
        allowed_hosts=tuple(h.lower() for h in server.allowed_hosts),
        cors_origins=tuple(o for o in origins if o != "*"),
        any_origin="*" in origins,
    )


def exposure(server: ServerConfig, has_key: bool) -> str | None:
    """The warning for a server bound off loopback without an API key (None: not the case)."""
    if is_loopback_address(server.host) or has_key:
        return None
    return (
        f"listening on {server.host} (not loopback) without an API key: anyone who can reach port "
        f"{server.port} can use, load and unload the models; set api_key_env"
    )


def binding_warnings(server: ServerConfig, has_key: bool) -> list[str]:
    """What an operator should know about how exposed the server is: logged at start and shown
    in ``/ready``'s body. ``require_api_key_off_loopback`` turns ``exposure`` into a refusal
    to start (``check_binding``)."""
    out = [w] if (w := exposure(server, has_key)) else []
    if policy(server).any_origin:
        out.append(
            'cors_origins = "*": ANY web page the user opens can call this server and read the answers'
            + ("" if has_key else ", with no API key to stop it")
        )
    return out


def check_binding(server: ServerConfig, has_key: bool) -> None:
    """A ConfigError when ``require_api_key_off_loopback`` forbids how the server is bound."""
    problem = exposure(server, has_key)
    if problem and server.require_api_key_off_loopback:
        raise ConfigError(f"{problem} (refused: require_api_key_off_loopback = true)")


class _Cors(CORSMiddleware):
    """Starlette's CORS, answering a good preflight with 204 and no body (it says 200 "OK")."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 200:
            return response
        headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        return Response(status_code=204, headers=headers)


class BrowserGuard:
    """The ASGI layer: Host check → Origin check → CORS (when configured) → the app."""

    def __init__(self, app: ASGIApp, server: ServerConfig) -> None:
        self.policy = policy(server)
        self.inner: ASGIApp = app
        if self.policy.cors_origins or self.policy.any_origin:
            self.inner = _Cors(
                app,
                allow_origins=["*"] if self.policy.any_origin else list(self.policy.cors_origins),
                allow_methods=CORS_METHODS,
                allow_headers=CORS_HEADERS,
                expose_headers=CORS_EXPOSE,
                allow_private_network=True,  # a trusted https page calling http://127.0.0.1 (Chrome)
            )
        # "*" in allowed_hosts: any Host; otherwise Starlette matches the configured names
        self.any_host = "*" in self.policy.allowed_hosts
        self.trusted_host = TrustedHostMiddleware(
            _mark_passed, allowed_hosts=list(self.policy.allowed_hosts), www_redirect=False
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        headers = Headers(scope=scope)
        server = scope.get("server")
        port = server[1] if server else None
        problem = None if self.any_host else self.policy.host_problem(headers.get("host"), port)
        if problem is not None and self.policy.allowed_hosts and await self._configured_host(scope):
            problem = None
        if problem is None:
            problem = self.policy.origin_problem(scope["method"], headers)
            code = "origin_not_allowed"
        else:
            code = "host_not_allowed"
        if problem is None:
            await self.inner(scope, receive, send)
            return
        log.warning("refused %s %s: %s", scope["method"], scope["path"], problem)
        await error_response(Forbidden(problem, code=code), scope["path"])(scope, receive, send)

    async def _configured_host(self, scope: Scope) -> bool:
        """Whether ``TrustedHostMiddleware`` with ``[server] allowed_hosts`` lets the request
        through (its own 400 is discarded: the caller answers with the API's 403)."""
        await self.trusted_host(scope, _disconnected, _discard)
        return bool(scope.pop(_PASSED, False))


_PASSED = "hearth.trusted_host"


async def _mark_passed(scope: Scope, receive: Receive, send: Send) -> None:
    scope[_PASSED] = True


async def _discard(message: Message) -> None:
    return None


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}
