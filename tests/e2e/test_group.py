"""A worker group: SmolLM2 split over three local ranks (ring backend over loopback, tensor
parallel) serves as one replica beside a one-process worker of the same model, in one gateway.

The group must answer exactly as the single worker does (greedy, and seeded sampling), streamed
and not, under concurrent requests; each rank carries MLX's own ``MLX_RANK`` and one BLAS
thread; /ready, /v1/models and ``hearth ps`` show the group and its ranks; killing any rank
mid-stream ends the in-flight answer with an error (``resume_attempts = 0`` here: a group's
death is a worker's death, docs/operations.md), the group restarts as a whole and queued
requests complete; a group size that doesn't divide the model's heads is refused at start.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ROOT, Gateway, chat, serving, sse_events, write_config

GROUP, SINGLE = "smol-group", "smol-single"
HOSTS = ["127.0.0.1"] * 3
PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write one sentence about the sea.",
    "What is 2 + 2?",
]
COMMON = {"path": "default", "warmup": False, "tools": "off"}  # no warm-up: restarts stay quick


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [
        {"name": SINGLE, **COMMON},
        {"name": GROUP, **COMMON, "distributed": {"hosts": HOSTS, "backend": "ring", "strategy": "tensor"}},
    ]
    with serving(tmp_path_factory.mktemp("group"), models, {"resume_attempts": 0}) as g:
        wait_group(g)
        yield g


def wait_group(gw: Gateway, old: set[int] = frozenset(), timeout: float = 240) -> list[dict[str, Any]]:  # type: ignore[assignment]
    """The ready group's ranks, once it is ready with three ranks none of which is in ``old``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws = gw.workers(GROUP)
        if len(ws) == 1 and ws[0]["state"] == "ready":
            ranks = ws[0].get("ranks") or []
            if len(ranks) == 3 and not {r["pid"] for r in ranks} & old and all("memory_bytes" in r for r in ranks):
                return ranks
        time.sleep(0.2)
    raise TimeoutError(f"the group did not become ready: {gw.workers(GROUP)}\n{gw.log()}")


def answer(gw: Gateway, model: str, content: str, stream: bool, **params: Any) -> str:
    body = chat(model, content, max_tokens=12, stream=stream, **params)
    r = gw.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    if not stream:
        return str(r.json()["choices"][0]["message"]["content"])
    events = sse_events(r)
    assert events[-1] == "[DONE]", events[-3:]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)


def test_the_group_is_one_ready_replica_with_three_ranks(gw: Gateway) -> None:
    ready = gw.http.get("/ready").json()["models"][GROUP]
    assert ready["state"] == "ready" and len(ready["workers"]) == 1
    ranks = ready["workers"][0]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1, 2] and [r["host"] for r in ranks] == HOSTS
    assert ranks[0]["pid"] == ready["workers"][0]["pid"]
    for r in ranks:  # MLX's own rank variable, as mlx.launch sets it, and one BLAS thread each
        env = environ(r["pid"])
        assert env["MLX_RANK"] == str(r["rank"]) and env["OPENBLAS_NUM_THREADS"] == "1"
        assert Path(env["MLX_HOSTFILE"]).is_file()
    w = ready["workers"][0]  # the group's memory is the sum over its ranks
    assert w["memory_bytes"] == sum(r["memory_bytes"] for r in ranks) > 0
    listed = {m["id"]: m for m in gw.http.get("/v1/models").json()["data"]}
    assert listed[GROUP]["state"] == "ready" and len(listed[GROUP]["workers"][0]["ranks"]) == 3
    admin = gw.http.get("/admin/models").json()
    group = next(m for m in admin["models"] if m["name"] == GROUP)
    assert group["memory_by_host"] == {"127.0.0.1": sum(r["memory_bytes"] for r in group["workers"][0]["ranks"])}
    ps = subprocess.run(
        [sys.executable, "-m", "gateway", "ps", "--url", gw.url], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert ps.returncode == 0, ps.stderr
    for r in ranks:
        assert f"{GROUP} {w['id']} rank {r['rank']}: pid {r['pid']} on 127.0.0.1" in ps.stdout, ps.stdout
    assert f"{GROUP} memory per host: 127.0.0.1" in ps.stdout
    metrics = gw.http.get("/metrics").text
    assert f'model="{GROUP}"' in metrics


@pytest.mark.parametrize("stream", [False, True])
def test_greedy_output_is_the_single_workers_under_four_concurrent_requests(gw: Gateway, stream: bool) -> None:
    expected = [answer(gw, SINGLE, p, stream=False) for p in PROMPTS]
    assert "Paris" in expected[0]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: answer(gw, GROUP, p, stream=stream), PROMPTS))
    assert got == expected, gw.log()  # its last lines: what the ranks logged


def test_sampling_above_zero_temperature_agrees_with_the_single_worker(gw: Gateway) -> None:
    # seeded: every rank draws rank 0's token, which is the single worker's draw
    params = {"temperature": 0.9, "top_p": 0.95, "seed": 11}
    expected = [answer(gw, SINGLE, p, stream=False, **params) for p in PROMPTS[:2]]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda p: answer(gw, GROUP, p, stream=True, **params), PROMPTS[:2]))
    assert got == expected
    # unseeded, several at once: the ranks stay in step (a rank that drew another token would
    # feed the shared collectives another sequence) and each answer runs its whole length
    body = chat(GROUP, "Tell me a story.", temperature=1.0, max_tokens=8, logit_bias={"2": -100})
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        rs = list(pool.map(lambda _: gw.http.post("/v1/chat/completions", json=body), range(3)))
    for r in rs:
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 8
    assert answer(gw, GROUP, PROMPTS[0], stream=False) == answer(gw, SINGLE, PROMPTS[0], stream=False)


def test_an_unloaded_group_saves_each_ranks_cache_and_the_next_one_starts_warm(gw: Gateway) -> None:
    prompt = "Which planet is the largest? Answer in one sentence."
    body = chat(GROUP, prompt, max_tokens=12)
    first = gw.http.post("/v1/chat/completions", json=body)
    assert first.status_code == 200, first.text
    old = {r["pid"] for r in wait_group(gw)}
    start = len(gw.log_path.read_bytes())
    r = gw.http.post(f"/admin/models/{GROUP}/unload")  # a drain: every rank saves its shard of the cache
    assert r.status_code == 200, r.text
    assert gw.workers(GROUP) == []
    r = gw.http.post(f"/admin/models/{GROUP}/load")
    assert r.status_code == 200, r.text
    wait_group(gw, old=old)
    lines = gw.log_path.read_bytes()[start:].decode(errors="replace").splitlines()
    for rank, saved in (
        (0, "saved for the next worker"),
        (1, "saved for the next group"),
        (2, "saved for the next group"),
    ):
        assert any(f"/rank{rank}]" in line and saved in line for line in lines), (rank, lines[-40:])
    for rank in (0, 1, 2):  # each rank loaded its own shard of the saved cache
        assert any(f"/rank{rank}]" in line and "(warm start)" in line for line in lines), (rank, lines[-40:])
    again = gw.http.post("/v1/chat/completions", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("rank", [1, 0], ids=["follower", "rank0"])
def test_a_rank_killed_mid_stream_fails_the_answer_and_the_group_restarts(gw: Gateway, rank: int) -> None:
    ranks = wait_group(gw)
    victim = ranks[rank]["pid"]
    expected = answer(gw, SINGLE, PROMPTS[0], stream=False)
    body = chat(GROUP, "Write a long story about a dragon.", max_tokens=400, stream=True, logit_bias={"2": -100})
    queued: list[Any] = []

    def ask() -> None:
        queued.append(gw.http.post("/v1/chat/completions", json=chat(GROUP, PROMPTS[0], max_tokens=12)))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    events: list[Any] = []
    with gw.http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if len(events) == 4:
                os.kill(victim, signal.SIGKILL)
                for t in threads:  # sent while the group is down: they wait for the restarted one
                    t.start()
    assert "worker_died" in events[-1] and f"rank {rank} exited with signal SIGKILL" in events[-1], events[-2:]
    assert "[DONE]" not in events
    for t in threads:
        t.join(300)
    assert len(queued) == 2
    for q in queued:
        assert q.status_code == 200, q.text
        assert q.json()["choices"][0]["message"]["content"] == expected
    new = wait_group(gw, old={r["pid"] for r in ranks})
    for r in ranks:  # the whole group went: no rank of the old one is left
        assert not Path(f"/proc/{r['pid']}").exists()
    assert len(new) == 3


def test_a_group_size_that_does_not_divide_the_heads_is_refused_at_start(tmp_path: Path) -> None:
    models = [{"name": "two", "path": "default", "distributed": {"hosts": ["127.0.0.1", "127.0.0.1"]}}]
    cfg = write_config(tmp_path / "hearth.toml", models)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--port", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode != 0
    err = p.stderr
    assert "tensor parallelism over 2 ranks" in err and "9 attention heads" in err and "3 KV heads" in err, err
    assert "group sizes that work: 3" in err
