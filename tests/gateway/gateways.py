"""The real gateway process for fake-worker tests: its models have ``replicas = 0``, so it spawns
no worker and only the fakes (see ``fakes.py``) join, over a loopback tcp endpoint. Each test
module starts its own, with its own settings; the fixtures all of them share are in
``conftest.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.gateway.fakes import FakeWorker
from tests.servers import Gateway, serving


@contextlib.contextmanager
def fake_gateway(
    tmp_path_factory: pytest.TempPathFactory, name: str, endpoint: str, models: list[dict[str, Any]], **server: Any
) -> Iterator[Gateway]:
    """A gateway listening on ``endpoint`` for fake workers; ``server`` is the module's own settings
    (``heartbeat_timeout``, ``request_wait``, ``sse_keepalive``...). Each of ``models`` gets
    ``replicas = 0`` and, unless it names one, a folder of its own as its path. Waits for /health
    only: /ready needs a ready worker."""
    tmp = tmp_path_factory.mktemp(name)
    models = [{"path": str(tmp), **m, "replicas": 0} for m in models]
    with serving(tmp, models, server={"endpoint": endpoint, **server}, ready=False) as g:
        yield g


def ready_fake(gw: Gateway, endpoint: str, model: str) -> FakeWorker:
    """A fake worker for ``model`` that said hello and ready, once the gateway sees it ready."""
    w = FakeWorker(endpoint, model)
    try:
        w.hello()
        w.state("ready")
        wait_until(lambda: worker_states(gw, model).get(w.worker_id) == "ready", what=f"{w.worker_id} ready")
    except BaseException:
        w.close()
        raise
    return w


def wait_until(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def ready_body(gw: Gateway) -> dict[str, Any]:
    return gw.http.get("/ready").json()


def worker_states(gw: Gateway, model: str) -> dict[str, str]:
    return {w["id"]: w["state"] for w in ready_body(gw)["models"][model]["workers"]}
