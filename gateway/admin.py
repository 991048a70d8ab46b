"""The admin API: what is loaded, and loading or unloading a model by hand.

    GET  /admin/models                    every configured model: state, replicas, memory, use
    POST /admin/models/{name}/load        load it; waits until ready (?wait=false: 202 at once)
    POST /admin/models/{name}/unload      drain and stop its workers; waits until they exited

The API key protects these paths like every API path (gateway/auth.py). Errors are in the
OpenAI error format. Times are given both absolute (UTC, ISO 8601) and relative (seconds).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import InvalidRequest, Unavailable
from gateway.memory import reported, reported_total
from gateway.models import ModelState
from gateway.pool import WorkerHandle
from gateway.supervisor import Supervisor
from shared.units import FOREVER

log = logging.getLogger("hearth.admin")


def _iso(mono: float | None) -> str | None:
    """A monotonic time as UTC wall-clock time."""
    if mono is None:
        return None
    wall = time.time() - (time.monotonic() - mono)
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def by_host(workers: list[WorkerHandle]) -> dict[str, int]:
    """What a worker group's ranks hold on each host (from rank 0's heartbeat), summed per host;
    empty for single workers (one process, one host)."""
    out: dict[str, int] = {}
    for w in workers:
        ranks = w.heartbeat.ranks if w.heartbeat is not None and w.heartbeat.ranks else None
        if ranks:
            for r in ranks:
                out[str(r["host"])] = out.get(str(r["host"]), 0) + int(r.get("memory_bytes") or 0)
    return out


def describe(sup: Supervisor, name: str) -> dict[str, Any]:
    model = sup.models[name]
    cfg = model.cfg
    est = sup.estimates[name]
    now = time.monotonic()
    workers = sup.models.pool.of_model(name)
    keep_alive = model.keep_alive_seconds()
    expiry = sup.expires_at(name)
    return {
        "name": name,
        "state": model.state.value,
        "detail": model.reason,
        "path": cfg.path,
        "preload": cfg.preload,
        "pinned": cfg.pin,
        "replicas": cfg.replicas,
        "workers": [
            {
                "id": w.worker_id,
                "pid": w.pid,
                "state": w.describe()["state"],
                "running": len(w.inflight),
                **reported(w.heartbeat),
                **({"ranks": ranks} if (ranks := w.rank_list()) else {}),  # a worker group's
            }
            for w in workers
        ],
        "memory_by_host": by_host(workers),
        "memory_estimate_bytes": est.total,
        "memory_estimate": {
            "weights_bytes": est.weights,
            "per_replica_bytes": est.per_replica,
            "weights_from": est.how,
        },
        **reported_total(w.heartbeat for w in workers),  # footprint, with MLX's counters beside it
        "ready_since": _iso(model.ready_since),
        "uptime_seconds": round(now - model.ready_since, 1) if model.ready_since is not None else None,
        "running": sup.models.running(model),
        "waiting": len(model.queue),
        "keep_alive_seconds": None if keep_alive == FOREVER else keep_alive,
        "expires_at": _iso(expiry),
        "expires_in_seconds": round(max(0.0, expiry - now), 1) if expiry is not None else None,
        "last_used": _iso(model.last_used) if model.last_used else None,
    }


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _supervisor(request: Request) -> Supervisor:
    return request.app.state.supervisor


def _model(request: Request) -> tuple[Supervisor, str]:
    sup = _supervisor(request)
    name = sup.models.resolve(request.path_params["name"], param="name").name
    if not sup.runners[name].cfg.replicas:
        raise InvalidRequest(
            f"the model '{name}' has replicas = 0: its workers are started on their own, not by Hearth", param="name"
        )
    return sup, name


async def list_models(request: Request) -> Response:
    sup = _supervisor(request)
    models = [describe(sup, n) for n in sup.runners]
    resident = [m for m in models if sup.models[m["name"]].resident]
    return _json(
        {
            "models": models,
            "loaded": len(resident),
            "memory_estimate_bytes": sum(m["memory_estimate_bytes"] for m in resident),
            "memory_bytes": sum(m["memory_bytes"] or 0 for m in resident),  # what the workers really hold
            "max_loaded_models": sup.limits.max_loaded,
            "memory_budget_bytes": sup.limits.budget,
        }
    )


async def load_model(request: Request) -> Response:
    sup, name = _model(request)
    wait = request.query_params.get("wait", "true").lower()
    if wait not in ("true", "false", "1", "0"):
        raise InvalidRequest("wait must be true or false", param="wait")
    timeout = sup.config.server.request_wait
    if wait in ("false", "0"):
        if sup.begin_load(name) is not None:  # no room yet: keep trying in the background
            sup.spawn(_load_quietly(sup, name, timeout))
        return _json(describe(sup, name), status=202)
    deadline = time.monotonic() + timeout
    await sup.load(name, timeout)
    model = sup.models[name]
    await sup.models.wait_until(
        model,
        lambda: True if model.state is ModelState.READY else None,
        deadline,
        f"the model '{name}' did not become ready",
    )
    return _json(describe(sup, name))


async def _load_quietly(sup: Supervisor, name: str, timeout: float) -> None:
    try:
        await sup.load(name, timeout)
    except Unavailable as e:  # the caller asked not to wait: the log and the model's state say it
        log.warning("admin load of %s: %s", name, e.message)


async def unload_model(request: Request) -> Response:
    sup, name = _model(request)
    await sup.unload(name, "admin")
    return _json(describe(sup, name))
