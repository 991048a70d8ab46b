"""The Starlette application: routes, the error mapping, and the lifespan that starts the
engine client and the worker supervisor and stops them (drain, SIGTERM, SIGKILL)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import admin, residency
from gateway.anthropic.endpoints import count_tokens, messages
from gateway.auth import ApiKeyMiddleware
from gateway.client import EngineClient
from gateway.console.endpoints import Console, open_paths
from gateway.curve import load_curve
from gateway.errors import HearthError, MethodNotAllowed, NotFound, error_response
from gateway.health import health, ready
from gateway.memory import Estimate, estimate
from gateway.metrics import Metrics
from gateway.models import Models
from gateway.ollama.endpoints import routes as ollama_routes
from gateway.openai.embeddings import create_embeddings
from gateway.openai.endpoints import chat_completions, completions, list_models
from gateway.openai.translate import check_defaults
from gateway.origins import BrowserGuard, binding_warnings, check_binding, policy
from gateway.responses import endpoints as responses
from gateway.responses.store import ResponseStore
from gateway.runtime import default_endpoint, make_runtime_dir, remove_runtime_dir
from gateway.session import Generations
from gateway.shutdown import Gate
from gateway.supervisor import Supervisor
from gateway.wrap import RequestWrap
from shared.config import Config, ConfigError
from shared.gc_freeze import freeze_loaded

log = logging.getLogger("hearth.app")


async def _hearth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HearthError)
    return error_response(exc, request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"no such path: {request.method} {request.url.path}"), request.url.path)
    if exc.status_code == 405:
        response = error_response(
            MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"), request.url.path
        )
        response.headers.update(exc.headers or {})  # Allow: the methods that are
        return response
    err = HearthError(str(exc.detail))
    err.status = exc.status_code
    err.type = "invalid_request_error"
    return error_response(err, request.url.path)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(HearthError(f"internal error: {type(exc).__name__}"), request.url.path)


def api_key(config: Config) -> str | None:
    name = config.server.api_key_env
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise ConfigError(f"the API key variable {name} is not set")
    return key


def check_residency(config: Config) -> dict[str, Estimate]:
    """Every model's memory estimate; a ConfigError if the preloaded and pinned models can't all
    be resident together under ``max_loaded_models`` and ``memory_budget``."""
    estimates = {m.name: estimate(m) for m in config.models}
    limits = residency.Limits(config.server.max_loaded_models, config.server.memory_budget_bytes())
    always = [(m.name, estimates[m.name].total) for m in config.models if m.replicas and (m.preload or m.pin)]
    problem = residency.startup_problem(always, limits)
    if problem:
        raise ConfigError(problem)
    return estimates


def create_app(config: Config) -> Starlette:
    for m in config.models:
        check_defaults(m)
    estimates = check_residency(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = make_runtime_dir()
        models = Models(config)
        client = EngineClient(config, models, default_endpoint(runtime), metrics, curve)
        await client.start()
        supervisor = Supervisor(config, models, client, estimates)
        metrics.watch_models(models, supervisor.restarts)
        app.state.models = models
        app.state.client = client
        app.state.supervisor = supervisor
        app.state.generations = Generations(config, models, client, metrics)
        await supervisor.start()
        freeze_loaded()  # routes, schemas and imports: out of the collector's walks (shared/gc_freeze.py)
        try:
            yield
        finally:
            await supervisor.stop()
            await client.stop()
            remove_runtime_dir(runtime)

    key = api_key(config)
    check_binding(config.server, has_key=key is not None)
    warnings = binding_warnings(config.server, has_key=key is not None)
    for line in warnings:
        log.warning("SECURITY: %s", line)
    curve = load_curve(config.server)
    metrics = Metrics()
    gate = Gate()
    metrics.watch_gate(gate)
    middleware = [
        Middleware(BrowserGuard, server=config.server),  # first: a web page's request does nothing
        Middleware(RequestWrap, gate=gate, metrics=metrics),
    ]
    if key:
        middleware.append(Middleware(ApiKeyMiddleware, key=key, open_paths=open_paths(config.server.ollama)))
    routes = [
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", create_embeddings, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/responses", responses.create_response, methods=["POST"]),
        Route("/v1/responses/{response_id}", responses.get_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses.delete_response, methods=["DELETE"]),
        Route("/admin/models", admin.list_models, methods=["GET"]),
        Route("/admin/models/{name:path}/load", admin.load_model, methods=["POST"]),
        Route("/admin/models/{name:path}/unload", admin.unload_model, methods=["POST"]),
    ]
    if config.server.ollama:
        routes += ollama_routes()
    routes += Console(metrics, policy(config.server), config.server.ollama, key is not None).routes()  # / or /console
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HearthError: _hearth_error, HTTPException: _http_error, Exception: _server_error},
    )
    app.state.warnings = warnings  # shown in /ready's body
    app.state.gate = gate  # flipped by gateway.shutdown.HearthServer on SIGTERM/SIGINT
    app.state.responses = ResponseStore(config.server.responses_store_entries, config.server.responses_store_size())
    return app
