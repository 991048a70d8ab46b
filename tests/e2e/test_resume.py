"""A worker that dies mid-stream costs the client nothing: its generations are resumed on a
replacement (or on another replica) and every client sees one uninterrupted answer, exactly the
undisturbed one for greedy requests. A poison request (the worker test hook kills every worker
it runs on) fails with ``poison_request`` while the requests that shared its workers complete.
``resume_attempts = 0`` (today's ``worker_died``) is covered by test_faults.py and
test_recovery.py, whose gateways run with it."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import Gateway, chat, serving

MARKER = "POISON-7f3a"
PROMPTS = ["Tell me about rivers", "Count some sheep", "A story of the sea", "Why is the sky blue"]
# greedy still, with penalties: the tiny model's plain greedy text is mostly one repeated token;
# these make it varied (multi-byte characters included) and make the penalties' history matter
VARIED = {"presence_penalty": 1.0, "frequency_penalty": 0.5}


def gateway(tiny_model: Path, tmp: Path, replicas: int) -> Any:
    models = [{"name": "tiny", "path": str(tiny_model), "replicas": replicas, "max_batch": 8}]
    server = {"restart_limit": 50, "restart_window": 120.0}
    env = {"HEARTH_TEST_EXIT_ON": MARKER, "HEARTH_TEST_EXIT_AFTER": "3"}
    return serving(tmp, models, server=server, env=env)


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with gateway(tiny_model, tmp_path_factory.mktemp("resume"), replicas=1) as g:
        yield g


@pytest.fixture(scope="module")
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
        yield ex


def openai_stream(gw: Gateway, prompt: str, max_tokens: int, seen: threading.Event | None = None) -> dict[str, Any]:
    """One OpenAI chat stream: its text, finish reasons, usage and error events; ``seen`` is set
    once two content chunks came."""
    body = chat("tiny", prompt, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True}, **VARIED)
    out: dict[str, Any] = {"text": "", "finish": [], "usage": None, "errors": [], "chunks": 0, "done": 0}
    with (
        httpx.Client(base_url=gw.url, timeout=120) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                out["done"] += 1
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                out["errors"].append(ev["error"])
                continue
            out["id"] = ev["id"].removeprefix("chatcmpl-")
            for c in ev.get("choices", []):
                if c["delta"].get("content"):
                    out["text"] += c["delta"]["content"]
                    out["chunks"] += 1
                if c.get("finish_reason"):
                    out["finish"].append(c["finish_reason"])
            if ev.get("usage"):
                out["usage"] = ev["usage"]
            if seen is not None and out["chunks"] >= 2:
                seen.set()
    return out


def anthropic_stream(gw: Gateway, prompt: str, max_tokens: int, seen: threading.Event | None = None) -> dict[str, Any]:
    body = {
        "model": "tiny",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": prompt}],
    }
    out: dict[str, Any] = {"text": "", "finish": [], "usage": None, "errors": [], "chunks": 0, "done": 0}
    with httpx.Client(base_url=gw.url, timeout=120) as http, http.stream("POST", "/v1/messages", json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            if ev["type"] == "error":
                out["errors"].append(ev["error"])
            elif ev["type"] == "content_block_delta" and ev["delta"]["type"] == "text_delta":
                out["text"] += ev["delta"]["text"]
                out["chunks"] += 1
            elif ev["type"] == "message_delta":
                out["finish"].append(ev["delta"]["stop_reason"])
                out["usage"] = ev["usage"]
            elif ev["type"] == "message_stop":
                out["done"] += 1
            if seen is not None and out["chunks"] >= 2:
                seen.set()
    return out


STREAMS = [openai_stream, openai_stream, openai_stream, anthropic_stream]


def worker_pid(gw: Gateway, index: int = 0) -> int:
    deadline = time.monotonic() + 60
    while True:
        ws = sorted(gw.workers("tiny"), key=lambda w: w["id"])
        if len(ws) > index and all(w["state"] == "ready" for w in ws):
            return int(ws[index]["pid"])
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.1)


def kill_mid_stream(
    gw: Gateway, pool: concurrent.futures.ThreadPoolExecutor, max_tokens: int, pid: int
) -> list[dict[str, Any]]:
    seen = [threading.Event() for _ in PROMPTS]
    futs = [pool.submit(f, gw, p, max_tokens, s) for f, p, s in zip(STREAMS, PROMPTS, seen, strict=True)]
    for s in seen:
        assert s.wait(60), gw.log()
    os.kill(pid, signal.SIGKILL)
    return [f.result(120) for f in futs]


def access_line(gw: Gateway, request_id: str) -> str:
    """The access-log line of request ``request_id`` (written once its response ended)."""
    deadline = time.monotonic() + 10
    while True:
        for line in gw.log_path.read_text(errors="replace").splitlines():
            if "hearth.access" in line and f"request_id={request_id}" in line:
                return line
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.1)


def metric(gw: Gateway, name: str) -> float:
    for line in gw.http.get("/metrics").text.splitlines():
        if line.startswith(f'{name}{{model="tiny"}}'):
            return float(line.split()[-1])
    return 0.0


def test_sigkill_mid_stream_under_four_streams_loses_nothing(
    gw: Gateway, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    undisturbed = [f(gw, p, 300) for f, p in zip(STREAMS, PROMPTS, strict=True)]
    assert all(not u["errors"] and u["chunks"] >= 2 for u in undisturbed), [
        (u["errors"], u["chunks"]) for u in undisturbed
    ]
    before = metric(gw, "hearth_resumes_total")
    got = kill_mid_stream(gw, pool, 300, worker_pid(gw))
    for want, have in zip(undisturbed, got, strict=True):
        assert not have["errors"], (have["errors"], gw.log())
        assert have["text"] == want["text"]
        assert have["finish"] == want["finish"] and have["done"] == 1
        assert have["usage"]["resumed"] == 1, have["usage"]
    for want, have in zip(undisturbed[:3], got[:3], strict=True):  # OpenAI: the whole answer counted once
        assert have["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]
        assert have["usage"]["prompt_tokens"] == want["usage"]["prompt_tokens"]
    assert got[3]["usage"]["output_tokens"] == undisturbed[3]["usage"]["output_tokens"]
    assert metric(gw, "hearth_resumes_total") == before + 4
    line = access_line(gw, got[0]["id"])
    assert " resumed=1" in line and f" finish_reason={got[0]['finish'][0]}" in line, line
    assert "resuming request" in gw.log_path.read_text(errors="replace")


def test_a_whole_response_is_resumed_too(gw: Gateway, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    body = chat("tiny", PROMPTS[0], max_tokens=300, **VARIED)
    want = gw.http.post("/v1/chat/completions", json=body).json()
    pid = worker_pid(gw)
    seen = threading.Event()
    other = pool.submit(openai_stream, gw, PROMPTS[1], 300, seen)  # tells when tokens flow
    whole = pool.submit(gw.http.post, "/v1/chat/completions", json=body)
    assert seen.wait(60)
    time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    r = whole.result(120)
    assert other.result(120)["usage"]["resumed"] == 1
    assert r.status_code == 200, r.text
    have = r.json()
    assert have["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
    assert have["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]
    assert have["usage"]["resumed"] == 1, have["usage"]


def test_a_poison_request_fails_while_the_others_complete(
    gw: Gateway, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    """The hook kills every worker once the poison request has made 3 tokens on it: the first
    death is nobody's fault yet, so all are resumed; the second has several suspects, which then
    run one at a time; the poison request's third death is charged to it alone."""
    undisturbed = [openai_stream(gw, p, 60) for p in PROMPTS[:3]]
    worker_pid(gw)
    before = metric(gw, "hearth_poison_requests_total")
    futs = [pool.submit(openai_stream, gw, p, 60) for p in PROMPTS[:3]]
    poison = pool.submit(openai_stream, gw, f"{MARKER} please", 60)
    bad = poison.result(180)
    assert [e["code"] for e in bad["errors"]] == ["poison_request"], (bad, gw.log())
    assert bad["chunks"] >= 1 and bad["done"] == 0
    for want, f in zip(undisturbed, futs, strict=True):
        have = f.result(180)
        assert not have["errors"], (have, gw.log())
        assert have["text"] == want["text"] and have["done"] == 1
    assert metric(gw, "hearth_poison_requests_total") == before + 1
    assert " finish_reason=poison_request" in access_line(gw, bad["id"])
    r = gw.http.post("/v1/chat/completions", json=chat("tiny", max_tokens=5))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5


def test_with_two_replicas_the_resume_goes_to_the_other_at_once(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    with gateway(tiny_model, tmp_path_factory.mktemp("resume2"), replicas=2) as g:
        undisturbed = [f(g, p, 300) for f, p in zip(STREAMS, PROMPTS, strict=True)]
        victim = worker_pid(g, 0)
        worker_pid(g, 1)
        first = sorted(g.workers("tiny"), key=lambda w: w["id"])[0]
        replica = first["id"].rsplit("-g", 1)[0]  # tiny-r0: its replacement is tiny-r0-g1
        got = kill_mid_stream(g, pool, 300, victim)
        # every stream ended before the killed replica's replacement was ready: the survivor took them
        ws = g.workers("tiny")
        assert not [w for w in ws if w["id"].startswith(replica) and w["pid"] != victim and w["state"] == "ready"], ws
        for want, have in zip(undisturbed, got, strict=True):
            assert not have["errors"], (have["errors"], g.log())
            assert have["text"] == want["text"] and have["done"] == 1
