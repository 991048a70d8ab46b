"""Graceful shutdown: SIGTERM while a stream is in flight. The stream finishes normally, /ready
and new requests say 503 meanwhile, and the gateway exits 0 leaving no worker behind."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.servers import alive, chat, serving


def test_sigterm_lets_a_stream_finish_then_exits_cleanly(tiny_model: Path, tmp_path: Path) -> None:
    with serving(tmp_path, [{"name": "tiny", "path": str(tiny_model)}], server={"shutdown_grace": 60.0}) as gw:
        pid = gw.workers("tiny")[0]["pid"]
        started = threading.Event()
        events: list[Any] = []

        def stream() -> None:
            body = chat("tiny", max_tokens=3000, stream=True)
            with httpx.Client(base_url=gw.url, timeout=120) as http:
                with http.stream("POST", "/v1/chat/completions", json=body) as r:
                    assert r.status_code == 200
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            data = line[6:]
                            events.append(data if data == "[DONE]" else json.loads(data))
                        if len(events) == 3:
                            started.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(60), gw.log()
        gw.proc.terminate()
        deadline = time.monotonic() + 10
        while (r := gw.http.get("/ready")).status_code != 503:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.02)
        assert r.json()["status"] == "shutting down"
        refused = gw.http.post("/v1/chat/completions", json=chat("tiny", max_tokens=2))
        assert reader.is_alive(), "the stream ended too soon to test anything"
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down", refused.text
        assert gw.http.get("/health").status_code == 200

        reader.join(120)
        assert not reader.is_alive()
        assert events[-1] == "[DONE]", events[-3:]
        finish = [e["choices"][0]["finish_reason"] for e in events[3:] if isinstance(e, dict) and e["choices"]]
        assert finish[-1] == "length", events[-3:]
        assert not any(isinstance(e, dict) and "error" in e for e in events[3:])
        assert gw.proc.wait(30) == 0, gw.log()
        assert not alive(pid), "a worker outlived its gateway's shutdown"
        assert "shutting down; waiting up to 60s for 1 request(s) in flight" in gw.log()
