"""Recovery with real worker processes: a hung worker (SIGSTOP) is killed at the heartbeat
deadline and replaced, a request queued when its worker died completes on the replacement, and
a model in a crash loop ends `failed` while the other model keeps serving."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import Gateway, alive, broken_model, chat, serving

HEARTBEAT_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("recovery")
    models = [
        {"name": "tiny", "path": str(tiny_model), "max_batch": 1},
        {"name": "broken", "path": str(broken_model(tmp))},  # preloaded: /ready stays 503 once it has failed
    ]
    server = {"heartbeat_timeout": HEARTBEAT_TIMEOUT, "restart_limit": 3, "restart_window": 120.0, "resume_attempts": 0}
    with serving(tmp, models, server=server, ready=False) as g:
        wait_for(lambda: ready_worker(g) is not None, g, "a ready tiny worker")
        yield g


@pytest.fixture(scope="module")
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
        yield ex


def wait_for(cond: Any, gw: Gateway, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"no {what} in {timeout}s:\n{gw.log()}"
        time.sleep(0.05)
    return value


def ready_worker(gw: Gateway) -> dict[str, Any] | None:
    return next((w for w in gw.workers("tiny") if w["state"] == "ready"), None)


def post(gw: Gateway, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=gw.url, timeout=120) as http:
        return http.post("/v1/chat/completions", json=body)


def test_a_hung_worker_is_killed_at_the_heartbeat_deadline_and_its_request_moves(
    gw: Gateway, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    """A stopped process sends no heartbeat: heartbeats come from the loop that steps the batch."""
    hung = wait_for(lambda: ready_worker(gw), gw, "a ready tiny worker")
    os.kill(hung["pid"], signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        fut = pool.submit(post, gw, chat("tiny", max_tokens=5))
        wait_for(lambda: any(w["inflight"] for w in gw.workers("tiny")), gw, "the request on the hung worker", 5)
        r = fut.result(90)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 5
        assert time.monotonic() - t0 >= HEARTBEAT_TIMEOUT  # it waited for the deadline, then moved
        assert not alive(hung["pid"])
        assert ready_worker(gw)["pid"] != hung["pid"]
        log = gw.log_path.read_text(errors="replace")
        assert f"worker {hung['id']} sent nothing for" in log
        assert f"worker {hung['id']} died (exit code -9: heartbeat timeout); re-dispatching request" in log
    finally:
        if alive(hung["pid"]):
            os.kill(hung["pid"], signal.SIGKILL)


def test_a_request_queued_when_its_worker_died_completes_on_the_replacement(
    gw: Gateway, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    victim = wait_for(lambda: ready_worker(gw), gw, "a ready tiny worker")
    with httpx.Client(base_url=gw.url, timeout=120) as http:
        body = chat("tiny", max_tokens=15000, stream=True)
        with http.stream("POST", "/v1/chat/completions", json=body) as running:
            assert running.status_code == 200
            lines = running.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            queued = pool.submit(post, gw, chat("tiny", max_tokens=4))  # max_batch = 1: it waits
            wait_for(lambda: gw.http.get("/ready").json()["models"]["tiny"]["waiting"] == 1, gw, "a queued request")
            os.kill(victim["pid"], signal.SIGKILL)
            rest = [line for line in lines if line.startswith("data: ")]
    assert "worker_died" in rest[-1]  # the running stream had output: it ends with an error
    r = queued.result(90)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4
    assert ready_worker(gw)["pid"] != victim["pid"]


def test_a_crash_loop_fails_its_model_while_the_other_keeps_serving(gw: Gateway) -> None:
    def failed() -> dict[str, Any] | None:
        broken = gw.http.get("/ready").json()["models"]["broken"]
        return broken if broken["state"] == "failed" else None

    info = wait_for(failed, gw, "failed state for the crash-looping model", 90)
    assert "3 worker exits within 120s" in info["detail"] and "No safetensors found" in info["detail"]
    r = gw.http.get("/ready")
    assert r.status_code == 503 and r.json()["models"]["tiny"]["state"] == "ready"
    models = {m["id"]: m for m in gw.http.get("/v1/models").json()["data"]}
    assert models["broken"]["state"] == "failed" and models["broken"]["detail"] == info["detail"]
    assert models["tiny"]["state"] == "ready"
    r = gw.http.post("/v1/chat/completions", json=chat("tiny", max_tokens=3))
    assert r.status_code == 200, r.text
    r = gw.http.post("/v1/chat/completions", json=chat("broken", max_tokens=3))
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_failed"
    restarts = [line for line in gw.http.get("/metrics").text.splitlines() if line.startswith("hearth_worker_restarts")]
    assert 'hearth_worker_restarts{model="broken"} 3.0' in restarts, restarts
