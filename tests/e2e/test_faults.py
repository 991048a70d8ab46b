"""Faults: a worker killed with SIGKILL mid-stream, and a model whose worker can't load."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Gateway, alive, broken_model, chat, serving


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("faults")
    models = [
        {"name": "tiny", "path": str(tiny_model), "max_batch": 1},
        {"name": "broken", "path": str(broken_model(tmp)), "preload": False},
    ]
    # resume_attempts = 0: a worker killed mid-stream ends its streams with worker_died, as tested here
    with serving(tmp, models, server={"restart_limit": 2, "restart_window": 120.0, "resume_attempts": 0}) as g:
        yield g


def test_sigkill_mid_stream_ends_with_an_error_and_the_worker_comes_back(gw: Gateway) -> None:
    pid = gw.workers("tiny")[0]["pid"]
    events = []
    with gw.http.stream("POST", "/v1/chat/completions", json=chat("tiny", max_tokens=15000, stream=True)) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line)
            if len(events) == 5:
                os.kill(pid, signal.SIGKILL)
                t_kill = time.monotonic()
                break
        rest = [line for line in lines if line.startswith("data: ")]
    assert time.monotonic() - t_kill < 10  # the stream ended instead of hanging
    assert rest, "the stream ended without saying why"
    assert '"error"' in rest[-1] and "worker_died" in rest[-1]
    assert all("[DONE]" not in line for line in rest)
    assert gw.http.get("/health").status_code == 200

    deadline = time.monotonic() + 60
    while True:
        workers = gw.workers("tiny")
        if workers and workers[0]["state"] == "ready" and workers[0]["pid"] != pid:
            break
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.1)
    r = gw.http.post("/v1/chat/completions", json=chat("tiny", max_tokens=5))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5


def test_a_model_that_cannot_load_fails_clearly(gw: Gateway) -> None:
    """Not preloaded: nothing starts until a request asks for it; its worker then fails to load,
    is restarted up to the budget, and the waiting request gets a 503 naming the failure."""
    assert gw.http.get("/ready").status_code == 200  # only preloaded models count
    assert gw.http.get("/ready").json()["models"]["broken"]["workers"] == []
    r = gw.http.post("/v1/chat/completions", json=chat("broken"))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "model_failed"
    assert "No safetensors found" in r.json()["error"]["message"]
    info = gw.http.get("/v1/models").json()["data"]
    broken = next(m for m in info if m["id"] == "broken")
    assert broken["state"] == "failed" and "No safetensors found" in broken["detail"]
    assert gw.http.get("/ready").status_code == 200


def test_workers_exit_when_the_gateway_is_killed(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGKILL gives the gateway no chance to drain: its workers notice the parent is gone."""
    with serving(tmp_path_factory.mktemp("orphans"), [{"name": "tiny", "path": str(tiny_model)}]) as g:
        pid = g.workers("tiny")[0]["pid"]
        g.proc.kill()
        g.proc.wait()
        deadline = time.monotonic() + 10
        while alive(pid):
            assert time.monotonic() < deadline, "the worker outlived its gateway"
            time.sleep(0.1)
