"""Workers on their own (``hearth worker``) joining a gateway over tcp:// with CURVE.

Real processes throughout: the gateway listens on a loopback tcp port with CURVE and also spawns
a local worker (on its private ipc socket); remote workers are started by the tests with the
keys made by ``hearth keys``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ROOT, Gateway, chat, free_port, serving, stop_process, write_config

REQUEST_WAIT = 3.0


def hearth(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


class RemoteWorker:
    """``hearth worker`` as a process of its own, logging into a file; always stopped."""

    def __init__(self, tmp: Path, worker_id: str, *args: str) -> None:
        self.worker_id = worker_id
        self.log_path = tmp / f"{worker_id}.log"
        self._log = open(self.log_path, "wb")
        cmd = hearth("worker", "--worker-id", worker_id, *args)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        rc = stop_process(self.proc, signal.SIGTERM, 20)  # drains and exits
        self._log.close()
        return rc


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gateway, good and bad key pairs; only good's public key is authorized."""
    folder = tmp_path_factory.mktemp("keys")
    for name in ("gateway", "good", "bad"):
        subprocess.run(hearth("keys", str(folder), "--name", name), check=True, env=env(), capture_output=True)
    authorized = folder / "authorized"
    authorized.mkdir()
    (authorized / "good.key").write_bytes((folder / "good.key").read_bytes())
    return folder


def config(tmp: Path, tiny_model: Path, keys: Path, port: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    models = [
        {"name": "local", "path": str(tiny_model)},  # spawned by the gateway, on the ipc socket
        {"name": "remote", "path": str(tiny_model), "replicas": 0, "preload": False},
        {"name": "other", "path": str(tiny_model), "replicas": 0, "preload": False},
    ]
    server = {
        "endpoint": f"tcp://127.0.0.1:{port}",
        "curve_secret_key": str(keys / "gateway.key_secret"),
        "curve_authorized_keys": str(keys / "authorized"),
        "request_wait": REQUEST_WAIT,
    }
    return models, server


@pytest.fixture(scope="module")
def setup(tiny_model: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    tmp = tmp_path_factory.mktemp("remote")
    port = free_port()
    models, server = config(tmp, tiny_model, keys, port)
    with serving(tmp, models, server=server) as g:
        yield g, f"tcp://127.0.0.1:{port}"


def worker_args(endpoint: str, cfg: Path, model: str, keys: Path, key: str) -> list[str]:
    return [
        "--connect", endpoint, "--config", str(cfg), "--model", model,
        "--server-key", str(keys / "gateway.key"), "--key", str(keys / f"{key}.key_secret"),
    ]  # fmt: skip


def wait_worker_ready(gw: Gateway, model: str, worker_id: str, rw: RemoteWorker, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {w["id"]: w["state"] for w in gw.workers(model)}
        if states.get(worker_id) == "ready":
            return
        assert rw.proc.poll() is None, f"the worker exited with {rw.proc.returncode}:\n{rw.log()}"
        assert time.monotonic() < deadline, f"{states}\n{rw.log()}\n{gw.log()}"
        time.sleep(0.1)


def test_a_worker_with_an_unauthorized_key_is_refused(setup: tuple[Gateway, str], keys: Path) -> None:
    gw, endpoint = setup
    rw = RemoteWorker(
        gw.log_path.parent, "intruder", *worker_args(endpoint, gw.log_path.parent / "hearth.toml", "other", keys, "bad")
    )
    try:
        rc = rw.proc.wait(30)  # it gives up instead of retrying forever
        assert rc == 5, rw.log()
        assert "refused this worker's CURVE key" in rw.log()
        assert "refused a worker: its CURVE key" in gw.log_path.read_text(errors="replace")
        assert gw.workers("other") == []
        r = gw.http.post("/v1/chat/completions", json=chat("other", max_tokens=3))
        assert r.status_code == 503, r.text
    finally:
        rw.stop()


def test_a_worker_with_the_wrong_server_key_gives_up(setup: tuple[Gateway, str], keys: Path) -> None:
    gw, endpoint = setup
    args = worker_args(endpoint, gw.log_path.parent / "hearth.toml", "other", keys, "good")
    args[args.index("--server-key") + 1] = str(keys / "bad.key")  # not the gateway's public key
    rw = RemoteWorker(gw.log_path.parent, "lost", *args)
    try:
        assert rw.proc.wait(30) == 5, rw.log()
        assert "is --server-key its public key" in rw.log()
        assert gw.workers("other") == []
    finally:
        rw.stop()


def test_an_authorized_worker_joins_and_serves_next_to_a_local_one(setup: tuple[Gateway, str], keys: Path) -> None:
    gw, endpoint = setup
    cfg = gw.log_path.parent / "hearth.toml"
    rw = RemoteWorker(gw.log_path.parent, "remote-1", *worker_args(endpoint, cfg, "remote", keys, "good"))
    try:
        wait_worker_ready(gw, "remote", "remote-1", rw)
        r = gw.http.post("/v1/chat/completions", json=chat("remote", max_tokens=5))
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 5
        r = gw.http.post("/v1/chat/completions", json=chat("local", max_tokens=5))
        assert r.status_code == 200, r.text
        assert gw.workers("local")[0]["id"].startswith("local-r0")
        assert "other settings" not in gw.log()  # the same TOML gives the same settings hash
    finally:
        assert rw.stop() == 0, rw.log()


def test_a_worker_rejoins_a_restarted_gateway(tiny_model: Path, keys: Path, tmp_path: Path) -> None:
    """The gateway's graceful stop leaves workers started on their own running; they say hello
    to the next gateway on the same endpoint and serve again without reloading."""
    port = free_port()
    models, server = config(tmp_path, tiny_model, keys, port)
    models = [m for m in models if m["name"] == "remote"]
    cfg = write_config(tmp_path / "worker.toml", models, server)
    endpoint = f"tcp://127.0.0.1:{port}"
    rw = RemoteWorker(tmp_path, "remote-2", *worker_args(endpoint, cfg, "remote", keys, "good"))
    try:
        for run in ("first", "second"):
            (tmp_path / run).mkdir()
            with serving(tmp_path / run, models, server=server, ready=False) as gw:
                wait_worker_ready(gw, "remote", "remote-2", rw)
                r = gw.http.post("/v1/chat/completions", json=chat("remote", max_tokens=4))
                assert r.status_code == 200, r.text
            assert gw.proc.returncode == 0
            assert rw.proc.poll() is None, rw.log()  # still there for the next gateway
        assert "saying hello again" in rw.log()
    finally:
        assert rw.stop() == 0, rw.log()
