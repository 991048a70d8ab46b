"""Model residency on real gateways and real tiny-model workers: idle unload and reload on
demand, the per-request keep_alive, pinning, eviction under max_loaded_models, the memory
budget, the admin API, /ready after unloads, and ``hearth ps``.

Keep-alives are a second or two so the tests stay short; every wait polls with a deadline.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ROOT, Gateway, chat, free_port, serving, write_config

CHAT = "/v1/chat/completions"


def wait_for(what: Callable[[], bool], gw: Gateway, timeout: float = 30.0, why: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out waiting: {why}\n{gw.log()}"
        time.sleep(0.1)


def admin(gw: Gateway) -> dict[str, Any]:
    r = gw.http.get("/admin/models")
    assert r.status_code == 200, r.text
    return r.json()


def model(gw: Gateway, name: str) -> dict[str, Any]:
    return next(m for m in admin(gw)["models"] if m["name"] == name)


def state(gw: Gateway, name: str) -> str:
    return str(model(gw, name)["state"])


def ask(gw: Gateway, name: str, **params: Any) -> httpx.Response:
    return gw.http.post(CHAT, json=chat(name, max_tokens=3, **params))


def unloads(gw: Gateway, name: str, reason: str) -> float:
    for line in gw.http.get("/metrics").text.splitlines():
        if line.startswith(f'hearth_model_unloads_total{{model="{name}",reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


# ---- keep-alive, pinning, admin, /ready ------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [
        {"name": "pre", "path": str(tiny_model)},  # preloaded: keep_alive forever by default
        {"name": "ka", "path": str(tiny_model), "preload": False, "keep_alive": 1.5},
        {"name": "pinned", "path": str(tiny_model), "preload": False, "pin": True, "keep_alive": "1s"},
    ]
    with serving(tmp_path_factory.mktemp("residency"), models, server={"request_wait": 60}) as g:
        yield g


def test_an_idle_model_unloads_after_its_keep_alive_and_reloads_on_demand(gw: Gateway) -> None:
    assert state(gw, "ka") == "unloaded"  # on demand: nothing runs before its first request
    assert ask(gw, "ka").status_code == 200
    first = model(gw, "ka")
    assert first["state"] == "ready" and first["keep_alive_seconds"] == 1.5
    pid = first["workers"][0]["pid"]
    before = unloads(gw, "ka", "idle")
    wait_for(lambda: state(gw, "ka") == "unloaded", gw, why="idle unload")
    gone = model(gw, "ka")
    assert gone["workers"] == [] and gone["expires_at"] is None and gone["last_used"] is not None
    assert unloads(gw, "ka", "idle") == before + 1
    listed = {m["id"]: m["state"] for m in gw.http.get("/v1/models").json()["data"]}
    assert listed["ka"] == "unloaded"
    assert gw.http.get("/ready").status_code == 200  # an on-demand model never holds /ready

    r = ask(gw, "ka")
    assert r.status_code == 200, r.text
    again = model(gw, "ka")
    assert again["state"] == "ready" and again["workers"][0]["pid"] != pid


def test_a_request_sets_the_keep_alive_from_then_on_like_ollama(gw: Gateway) -> None:
    assert ask(gw, "ka", keep_alive=-1).status_code == 200
    m = model(gw, "ka")
    assert m["keep_alive_seconds"] is None and m["expires_at"] is None  # forever
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:  # longer than the configured 1.5 s
        assert state(gw, "ka") == "ready"
        time.sleep(0.25)

    assert ask(gw, "ka", keep_alive="10m").status_code == 200
    m = model(gw, "ka")
    assert m["keep_alive_seconds"] == 600 and 590 < m["expires_in_seconds"] <= 600
    assert m["expires_at"].endswith("Z")

    assert ask(gw, "ka", keep_alive=0).status_code == 200  # unload as soon as idle
    wait_for(lambda: state(gw, "ka") == "unloaded", gw, timeout=10, why="keep_alive 0")

    assert ask(gw, "ka").status_code == 200  # no keep_alive: the configured one again
    assert model(gw, "ka")["keep_alive_seconds"] == 1.5


@pytest.mark.parametrize("bad", ["soon", True, [1], "5 minutes"])
def test_a_bad_keep_alive_is_a_400_naming_it(gw: Gateway, bad: Any) -> None:
    r = ask(gw, "pre", keep_alive=bad)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "keep_alive"
    r = gw.http.post("/v1/completions", json={"model": "pre", "prompt": "x", "max_tokens": 1, "keep_alive": bad})
    assert r.status_code == 400 and r.json()["error"]["param"] == "keep_alive"


def test_a_pinned_model_is_not_unloaded_when_idle_but_an_admin_may(gw: Gateway) -> None:
    assert ask(gw, "pinned").status_code == 200
    ready_at = time.monotonic()
    m = model(gw, "pinned")
    assert m["pinned"] is True and m["expires_at"] is None
    while time.monotonic() - ready_at < 3.0:  # three times its keep_alive
        assert state(gw, "pinned") == "ready"
        time.sleep(0.25)
    r = gw.http.post("/admin/models/pinned/unload")
    assert r.status_code == 200 and r.json()["state"] == "unloaded"
    assert unloads(gw, "pinned", "admin") == 1


def test_only_configured_models_are_served(gw: Gateway, tiny_model: Path) -> None:
    for name in (str(tiny_model), "nope"):
        r = ask(gw, name)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert [m["name"] for m in admin(gw)["models"]] == ["pre", "ka", "pinned"]
    r = gw.http.post(f"/admin/models/{tiny_model}/load")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_admin_list_shows_every_model_with_its_memory_and_use(gw: Gateway) -> None:
    assert ask(gw, "pre").status_code == 200
    data = admin(gw)
    assert data["max_loaded_models"] == 0 and data["memory_budget_bytes"] == 0
    pre = next(m for m in data["models"] if m["name"] == "pre")
    assert pre["state"] == "ready" and pre["preload"] is True and pre["pinned"] is False
    assert pre["replicas"] == 1 and len(pre["workers"]) == 1 and pre["workers"][0]["pid"] > 0
    weights = pre["memory_estimate"]["weights_bytes"]
    assert weights > 0 and pre["memory_estimate_bytes"] == weights + (1 << 30)  # + the default prompt cache
    wait_for(lambda: model(gw, "pre")["memory_bytes"] is not None, gw, why="a heartbeat")
    assert pre["uptime_seconds"] >= 0 and pre["ready_since"].endswith("Z") and pre["last_used"].endswith("Z")
    assert pre["running"] == pre["waiting"] == 0
    assert pre["keep_alive_seconds"] is None and pre["expires_at"] is None  # preloaded: forever


def test_admin_load_and_unload(gw: Gateway) -> None:
    r = gw.http.post("/admin/models/ka/load")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "ready" and r.json()["workers"][0]["state"] == "ready"
    r = gw.http.post("/admin/models/ka/unload")
    assert r.status_code == 200 and r.json()["state"] == "unloaded" and r.json()["workers"] == []

    r = gw.http.post("/admin/models/ka/load?wait=false")
    assert r.status_code == 202 and r.json()["state"] in ("starting", "loading", "ready")
    wait_for(lambda: state(gw, "ka") in ("ready", "unloaded"), gw, why="background load")

    for path in ("/admin/models/nope/load", "/admin/models/nope/unload"):
        r = gw.http.post(path)
        assert r.status_code == 404 and r.json()["error"]["param"] == "name"
    r = gw.http.post("/admin/models/ka/load?wait=maybe")
    assert r.status_code == 400 and r.json()["error"]["param"] == "wait"
    assert gw.http.get("/admin/models/ka/unload").status_code == 405


def test_unloading_a_busy_model_lets_its_requests_finish_and_does_not_restart_it(gw: Gateway) -> None:
    def restarts() -> str:
        return [
            x for x in gw.http.get("/metrics").text.splitlines() if x.startswith('hearth_worker_restarts{model="ka"')
        ][0]

    assert gw.http.post("/admin/models/ka/load").status_code == 200
    before = restarts()
    body = chat("ka", max_tokens=300, stream=True, loop_guard=False, logit_bias={str(i): -100 for i in range(3)})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with gw.http.stream("POST", CHAT, json=body) as s:
            lines = s.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            unloading = pool.submit(lambda: gw.http.post("/admin/models/ka/unload"))
            wait_for(lambda: state(gw, "ka") == "unloading", gw, timeout=10, why="unloading")
            rest = [json.loads(x[6:]) if x != "data: [DONE]" else x for x in lines if x.startswith("data: ")]
        r = unloading.result(timeout=60)
    assert rest[-1] == "data: [DONE]" and rest[-2]["choices"][0]["finish_reason"] == "length"
    assert r.status_code == 200 and r.json()["state"] == "unloaded"
    assert restarts() == before and state(gw, "ka") == "unloaded"


def test_ready_forgets_a_preloaded_model_unloaded_on_purpose_until_an_admin_loads_it(gw: Gateway) -> None:
    r = gw.http.post("/admin/models/pre/unload")
    assert r.status_code == 200 and r.json()["state"] == "unloaded"
    ready = gw.http.get("/ready")
    assert ready.status_code == 200 and ready.json()["models"]["pre"]["state"] == "unloaded"
    assert unloads(gw, "pre", "admin") == 1
    r = gw.http.post("/admin/models/pre/load")
    assert r.status_code == 200 and r.json()["state"] == "ready"
    assert gw.http.get("/ready").status_code == 200


def test_residency_metrics(gw: Gateway) -> None:
    text = gw.http.get("/metrics").text
    assert 'hearth_models{model="pre",state="ready"} 1.0' in text
    assert "hearth_loaded_models " in text
    assert "hearth_model_unloads_total" in text


def test_hearth_ps_shows_the_live_gateway(gw: Gateway) -> None:
    assert ask(gw, "pre").status_code == 200
    cmd = [sys.executable, "-m", "gateway", "ps", "--url", gw.url]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30, env=_env())
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "STATE"]
    rows = {line.split()[0]: line for line in lines[1:] if line.strip()}
    assert set(rows) == {"pre", "ka", "pinned"}
    assert rows["pre"].split()[1:3] == ["ready", "1/1"] and rows["pre"].rstrip().endswith("forever")
    as_json = subprocess.run([*cmd, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=30, env=_env())
    assert as_json.returncode == 0
    assert [m["name"] for m in json.loads(as_json.stdout)["models"]] == ["pre", "ka", "pinned"]
    down = subprocess.run(
        [sys.executable, "-m", "gateway", "ps", "--url", f"http://127.0.0.1:{free_port()}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(),
    )
    assert down.returncode == 1 and "cannot reach" in down.stderr


def _env() -> dict[str, str]:
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HEARTH_API_KEY", None)
    return env


# ---- eviction under max_loaded_models --------------------------------------------------------

WAIT = 8.0  # request_wait of the eviction gateway


@pytest.fixture(scope="module")
def one_at_a_time(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [
        {"name": "a", "path": str(tiny_model), "preload": False},
        {"name": "b", "path": str(tiny_model), "preload": False},
    ]
    server = {"max_loaded_models": 1, "request_wait": WAIT}
    with serving(tmp_path_factory.mktemp("evict"), models, server=server) as g:
        yield g


def test_loading_b_evicts_idle_a(one_at_a_time: Gateway) -> None:
    gw = one_at_a_time
    assert ask(gw, "a").status_code == 200
    assert state(gw, "a") == "ready"
    r = ask(gw, "b")
    assert r.status_code == 200, r.text
    assert state(gw, "a") == "unloaded" and state(gw, "b") == "ready"
    assert unloads(gw, "a", "evicted") == 1
    assert admin(gw)["loaded"] == 1


class Busy:
    """A long streaming request that keeps a model busy until closed: no end-of-sequence token
    (specials 0-2 banned), no loop guard."""

    def __init__(self, gw: Gateway, name: str) -> None:
        body = chat(name, max_tokens=15000, stream=True, loop_guard=False, logit_bias={str(i): -100 for i in range(3)})
        self.cm = gw.http.stream("POST", CHAT, json=body, timeout=120)
        self.response = self.cm.__enter__()
        assert self.response.status_code == 200
        self.lines = self.response.iter_lines()  # kept: a dropped iterator closes the response
        first = next(line for line in self.lines if line.startswith("data: "))
        assert '"error"' not in first, first

    def close(self) -> None:
        self.cm.__exit__(None, None, None)


def test_a_request_for_a_while_b_is_busy_waits_then_loads_a(one_at_a_time: Gateway) -> None:
    gw = one_at_a_time
    busy = Busy(gw, "b")
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(lambda: ask(gw, "a"))
            wait_for(lambda: model(gw, "a")["waiting"] == 1, gw, timeout=5, why="a request waiting for a")
            assert state(gw, "a") == "unloaded" and state(gw, "b") == "ready"  # b is busy: not evicted
            busy.close()  # b goes idle: a evicts it
            r = pending.result(timeout=WAIT + 30)
    finally:
        busy.close()
    assert r.status_code == 200, r.text
    assert state(gw, "a") == "ready" and state(gw, "b") == "unloaded"


def test_a_request_that_cannot_get_room_in_time_is_a_503_naming_the_limit(one_at_a_time: Gateway) -> None:
    gw = one_at_a_time
    assert ask(gw, "b").status_code == 200  # b loaded (a evicted)
    busy = Busy(gw, "b")
    try:
        t0 = time.monotonic()
        r = ask(gw, "a")
        waited = time.monotonic() - t0
    finally:
        busy.close()
    assert r.status_code == 503
    assert "max_loaded_models = 1" in r.json()["error"]["message"] and "'b'" not in r.json()["error"]["message"]
    assert WAIT - 1 <= waited < WAIT + 10
    r = ask(gw, "a")  # b is idle now
    assert r.status_code == 200, r.text


# ---- the memory budget -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def budget_gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    weights = sum(f.stat().st_size for f in tiny_model.glob("*.safetensors"))
    small = {"path": str(tiny_model), "preload": False, "prompt_cache_bytes": 40 << 20}  # ~40 MiB each
    models = [
        {"name": "small", **small},
        {"name": "small2", **small},
        {"name": "big", "path": str(tiny_model), "preload": False},  # + 1 GiB of prompt cache
    ]
    assert 2 * (weights + (40 << 20)) > 60 << 20  # the budget holds one small model, not two
    with serving(tmp_path_factory.mktemp("budget"), models, server={"memory_budget": "60MiB"}) as g:
        yield g


def test_a_model_over_the_memory_budget_is_a_503_at_once_naming_the_budget(budget_gw: Gateway) -> None:
    t0 = time.monotonic()
    r = ask(budget_gw, "big")
    assert r.status_code == 503 and time.monotonic() - t0 < 5
    err = r.json()["error"]
    assert (
        err["code"] == "memory_budget_exceeded" and "memory_budget" in err["message"] and "60.0 MiB" in err["message"]
    )
    r = budget_gw.http.post("/admin/models/big/load")
    assert r.status_code == 503 and r.json()["error"]["code"] == "memory_budget_exceeded"
    assert ask(budget_gw, "small").status_code == 200  # a model that fits loads
    assert state(budget_gw, "big") == "unloaded"


def test_the_budget_evicts_the_least_recently_used_idle_model(budget_gw: Gateway) -> None:
    assert ask(budget_gw, "small").status_code == 200
    assert ask(budget_gw, "small2").status_code == 200
    assert state(budget_gw, "small") == "unloaded" and state(budget_gw, "small2") == "ready"
    assert unloads(budget_gw, "small", "evicted") == 1
    data = admin(budget_gw)
    assert data["memory_budget_bytes"] == 60 << 20 and data["memory_estimate_bytes"] <= 60 << 20


def test_a_preloaded_model_over_the_budget_fails_the_start(tiny_model: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "hearth.toml", [{"name": "big", "path": str(tiny_model)}], {"memory_budget": "1MiB"})
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(free_port())]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode == 2
    assert "memory_budget" in out.stderr and "'big'" in out.stderr
