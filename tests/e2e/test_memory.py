"""Worker memory (issue 19), with the real gateway and worker on the tiny model.

A few hundred varied requests through one worker (streams, dropped streams, cancels, tool
calls, Anthropic, long shared prefixes, bad input) keep its footprint (RSS, read from /proc by
the test) under the configured ``memory_ceiling`` without a restart; the memory that
``hearth ps``, ``/admin/models`` and ``/metrics`` show is that RSS, with MLX's counters beside
it; and a worker over its ceiling even after trimming drains and is restarted.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ROOT, TOOLS, Gateway, serving, write_config
from tests.tinymodel import build_tiny_model

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

CEILING = 1 << 30  # 1 GiB; the tiny model's worker holds a few hundred MiB
REQUESTS = 300
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()
SYSTEM = " ".join(WORDS * 30)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("memory")
    tools_model = build_tiny_model(tmp / "model", tools=True)  # its template renders tools
    model = {"name": "tiny", "path": str(tools_model), "memory_ceiling": CEILING, "prompt_cache_bytes": 64 << 20}
    cfg = write_config(tmp / "hearth.toml", [model])
    g = Gateway(["--config", str(cfg)], tmp / "gateway.log")
    try:
        g.wait_ready()
        yield g
    finally:
        g.stop()


def worker(gw: Gateway) -> dict[str, Any]:
    (m,) = gw.http.get("/admin/models").json()["models"]
    (w,) = m["workers"]
    return w


def one(http: httpx.Client, i: int) -> str:
    rng = random.Random(i)
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 300)))
    body: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": rng.randint(1, 24),
        "temperature": 0.8,
        "seed": i,
    }
    kind = i % 7
    if kind == 0:  # a stream read to the end
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            lines = [x for x in r.iter_lines() if x.startswith("data: ")]
        return "ok" if r.status_code == 200 and lines[-1] == "data: [DONE]" else f"bad stream {r.status_code}"
    if kind == 1:  # a stream the client drops after its first chunk
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True, "max_tokens": 200}) as r:
            next(x for x in r.iter_lines() if x.startswith("data: "))
        return "ok" if r.status_code == 200 else f"bad drop {r.status_code}"
    if kind == 2:  # the client gives up: the gateway cancels
        try:
            r = http.post("/v1/chat/completions", json={**body, "max_tokens": 400, "loop_guard": False}, timeout=0.3)
        except httpx.ReadTimeout:
            return "ok"
        return "ok" if r.status_code == 200 else f"bad cancel {r.status_code}"
    if kind == 3:
        r = http.post("/v1/chat/completions", json={**body, "tools": TOOLS})
    elif kind == 4:
        r = http.post("/v1/messages", json={"model": "tiny", "max_tokens": 8, "messages": body["messages"]})
    elif kind == 5:  # a long shared prefix
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text[:200]}]
        r = http.post("/v1/chat/completions", json={**body, "messages": msgs})
    else:
        r = http.post("/v1/chat/completions", json={**body, "top_p": 9})  # bad input
        return "ok" if r.status_code == 400 else f"bad 400 {r.status_code}"
    return "ok" if r.status_code == 200 else f"bad {kind} {r.status_code} {r.text[:200]}"


def test_hundreds_of_varied_requests_stay_under_the_ceiling(gw: Gateway) -> None:
    pid = worker(gw)["pid"]
    start = rss(pid)
    highest = [start]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            highest[0] = max(highest[0], rss(pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool, httpx.Client(base_url=gw.url, timeout=120) as http:
            outcomes = list(pool.map(lambda i: one(http, i), range(REQUESTS)))
    finally:
        done.set()
        watcher.join()
    assert [o for o in outcomes if o != "ok"] == []
    w = worker(gw)
    assert w["pid"] == pid and w["state"] == "ready"  # the same worker: it never had to shed or restart
    assert highest[0] < CEILING, f"peak RSS {highest[0] >> 20} MiB"
    text = gw.http.get("/metrics").text
    assert re.search(r'^hearth_worker_restarts\{model="tiny"\} 0\.0$', text, re.M)
    # what grew is bounded: the prompt cache (64 MiB here) and MLX's buffer cache (released when idle)
    assert rss(pid) - start < (64 << 20) + (128 << 20), f"{start >> 20} -> {rss(pid) >> 20} MiB"


class Watch:
    """The worker's RSS, sampled every 20 ms while the test reads reports: a report is a
    heartbeat's sample, taken a moment before it is read, and an idle worker's RSS still moves
    by a few MiB (the allocator), so a report is checked against what the RSS was meanwhile."""

    def __init__(self, pid: int, first: int) -> None:
        self.pid, self.samples = pid, [first]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            self.samples.append(rss(self.pid))
            time.sleep(0.02)

    def near(self, value: float, rel: float = 0.03) -> bool:
        """Whether ``value`` is within ``rel`` of the RSS seen since the watch began."""
        lo, hi = min(self.samples), max(self.samples + [rss(self.pid)])
        return lo * (1 - rel) <= value <= hi * (1 + rel)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def settled(gw: Gateway) -> tuple[Watch, dict[str, Any]]:
    """A watch on the worker's RSS and its reported figures once idle: its caches are released
    after 2 s idle (the model's idle_release_s), and the next heartbeats report that. The
    watch starts before the heartbeat (one a second) whose figures are read, so it saw the RSS
    that heartbeat sampled: an idle worker's RSS moved by 4-6% between a heartbeat and a reading
    just after it on CI."""
    pid = worker(gw)["pid"]
    time.sleep(3.0)
    watch = Watch(pid, rss(pid))
    time.sleep(1.5)
    return watch, worker(gw)


def test_admin_metrics_and_hearth_ps_show_the_worker_rss(gw: Gateway) -> None:
    watch, w = settled(gw)
    try:
        _check_reports(gw, watch, w)
    finally:
        watch.stop()


def _check_reports(gw: Gateway, watch: Watch, w: dict[str, Any]) -> None:
    assert watch.near(w["memory_bytes"]), (w, min(watch.samples), max(watch.samples))
    assert 0 < w["mlx_active_bytes"] <= w["memory_bytes"]  # MLX's counters beside the footprint
    assert w["mlx_peak_bytes"] >= w["mlx_active_bytes"]
    assert w["mlx_cache_bytes"] == 0  # idle: the buffer cache was released
    (m,) = gw.http.get("/admin/models").json()["models"]
    assert watch.near(m["memory_bytes"]) and m["mlx_active_bytes"] == w["mlx_active_bytes"]
    text = gw.http.get("/metrics").text
    got = dict(re.findall(r'^hearth_worker_memory_bytes\{kind="(\w+)",model="tiny"\} (\S+)$', text, re.M))
    assert set(got) == {"footprint", "mlx_active", "mlx_cache", "mlx_peak"}, text
    assert watch.near(float(got["footprint"])), (got, watch.samples[-1])

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ps = [sys.executable, "-m", "gateway", "ps", "--url", gw.url]
    as_json = subprocess.run([*ps, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert as_json.returncode == 0, as_json.stderr
    reported = json.loads(as_json.stdout)["models"][0]["workers"][0]["memory_bytes"]
    assert watch.near(reported), (reported, min(watch.samples), max(watch.samples))
    shown = subprocess.run(ps, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    header, row = shown.stdout.splitlines()[:2]
    assert "MEMORY" in header and "MLX ACTIVE" in header and "MLX CACHE" in header
    at = header.index("   MEMORY") + 3  # not EST. MEMORY
    size = re.match(r"([\d.]+) (MiB|GiB)", row[at:])
    assert size, shown.stdout
    shown_bytes = float(size[1]) * (1 << (20 if size[2] == "MiB" else 30))
    assert watch.near(shown_bytes, rel=0.05), shown.stdout


def test_a_worker_over_its_ceiling_after_a_trim_drains_and_restarts(tiny_model: Path, tmp_path: Path) -> None:
    """A ceiling below what the model alone needs: each worker sheds, trims, is still over,
    drains and exits (code 6), and the supervisor starts another, until the restart budget ends."""
    model = {"name": "tiny", "path": str(tiny_model), "memory_ceiling": 1 << 20}
    with serving(tmp_path, [model], server={"restart_limit": 3, "restart_window": 600}, ready=False) as gw:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            (m,) = gw.http.get("/admin/models").json()["models"]
            if m["state"] == "failed":
                break
            time.sleep(0.5)
        assert m["state"] == "failed", m
        assert "exit code 6" in m["detail"] and "memory_ceiling" in m["detail"], m["detail"]
        log = gw.log()
        assert "over the ceiling" in log and "shedding load" in log and "draining and exiting" in log, log


def test_the_loaded_worker_froze_its_objects_out_of_collections(gw: Gateway) -> None:
    # shared/gc_freeze.py: the worker freezes what loading built before it says ready
    found = re.findall(r"(\d+) objects frozen out of garbage collection", gw.log_path.read_text())
    assert found and int(found[0]) > 10_000, found


def test_idle_release_s_0_keeps_the_buffer_cache_while_idle(tiny_model: Path, tmp_path: Path) -> None:
    """The contrast with the default (released after 2 s idle, ``mlx_cache_bytes == 0`` above):
    with ``idle_release_s = 0`` the freed buffers stay cached for the next burst."""
    model = {"name": "tiny", "path": str(tiny_model), "idle_release_s": 0}
    with serving(tmp_path, [model]) as g:
        for i in range(3):
            r = g.http.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 8, "seed": i,
                            "messages": [{"role": "user", "content": " ".join(WORDS * (i + 1))}]})  # fmt: skip
            assert r.status_code == 200, r.text
        time.sleep(3.5)  # past the default's 2 s and at least one heartbeat after it
        assert worker(g)["mlx_cache_bytes"] > 0, worker(g)
