"""Chat completions end to end: real gateway, real worker, tiny random-weight model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared.blas import openblas_path
from tests.servers import Gateway, chat, sse_events


def test_non_streaming_answer_and_usage(tiny_gateway: Gateway) -> None:
    r = tiny_gateway.http.post("/v1/chat/completions", json=chat("tiny", max_tokens=12))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 12
    assert usage["prompt_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 12


def test_streaming_matches_non_streaming(tiny_gateway: Gateway) -> None:
    body = chat("tiny", "Tell me about Paris", max_tokens=24)
    whole = tiny_gateway.http.post("/v1/chat/completions", json=body).json()
    with tiny_gateway.http.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["length"]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == {
        k: whole["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    }
    # the same prompt again: all of it but the last token comes from the KV prompt cache
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1


def test_stream_without_include_usage_has_no_usage_chunk(tiny_gateway: Gateway) -> None:
    with tiny_gateway.http.stream("POST", "/v1/chat/completions", json=chat("tiny", max_tokens=3, stream=True)) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])


def test_stop_string_cuts_before_it(tiny_gateway: Gateway) -> None:
    base = chat("tiny", "Count with me", max_tokens=40)
    full = tiny_gateway.http.post("/v1/chat/completions", json=base).json()["choices"][0]["message"]["content"]
    stop = full[10:13]
    assert len(stop) == 3
    cut = full[: full.index(stop)]
    r = tiny_gateway.http.post("/v1/chat/completions", json={**base, "stop": [stop]})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == cut
    with tiny_gateway.http.stream("POST", "/v1/chat/completions", json={**base, "stop": stop, "stream": True}) as s:
        events = sse_events(s)
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert streamed == cut
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_multibyte_characters_are_never_split(tiny_gateway: Gateway) -> None:
    """Each streamed delta decodes on its own to exactly the text of the whole answer."""
    body = chat("tiny", "東京 🚀 Grüße aus Köln", max_tokens=60, stream=True)
    with tiny_gateway.http.stream("POST", "/v1/chat/completions", json=body) as r:
        events = sse_events(r)
    deltas = [e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]]
    whole = tiny_gateway.http.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert "".join(deltas) == whole["choices"][0]["message"]["content"]
    for d in deltas:
        d.encode("utf-8")  # a lone surrogate (half a character) would raise here


def test_temperature_and_top_p_sample(tiny_gateway: Gateway) -> None:
    body = chat("tiny", "Say something", max_tokens=16, temperature=1.5, top_p=0.95)
    texts = {
        tiny_gateway.http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        for _ in range(4)
    }
    assert len(texts) > 1  # random weights + sampling: four identical answers would mean greedy
    greedy = {
        tiny_gateway.http.post("/v1/chat/completions", json={**body, "temperature": 0}).json()["choices"][0]["message"][
            "content"
        ]
        for _ in range(2)
    }
    assert len(greedy) == 1


def test_models_lists_state(tiny_gateway: Gateway) -> None:
    data = tiny_gateway.http.get("/v1/models").json()["data"]
    assert [(m["id"], m["state"]) for m in data] == [("tiny", "ready")]
    assert data[0]["workers"][0]["state"] == "ready"


def test_concurrent_streams_are_batched(tiny_gateway: Gateway) -> None:
    """Several requests at once all finish, each with its own full answer."""
    import concurrent.futures

    def one(i: int) -> dict:
        return tiny_gateway.http.post("/v1/chat/completions", json=chat("tiny", f"Request {i}", max_tokens=20)).json()

    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        results = list(ex.map(one, range(6)))
    assert all(r["usage"]["completion_tokens"] == 20 for r in results)


def test_client_disconnect_frees_the_worker(tiny_gateway: Gateway) -> None:
    """A client that goes away mid-stream is cancelled: the worker drops the sequence and the
    gateway forgets it, so nothing stays in flight."""
    body = chat("tiny", "Go on forever", max_tokens=15000, stream=True)
    with tiny_gateway.http.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert tiny_gateway.workers("tiny")[0]["inflight"] == 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        w = tiny_gateway.workers("tiny")[0]
        if w["inflight"] == 0 and w["running"] == 0 and w["waiting"] == 0:  # gateway and worker agree
            break
        time.sleep(0.05)
    assert (w["inflight"], w["running"], w["waiting"]) == (0, 0, 0)
    t0 = time.monotonic()
    r2 = tiny_gateway.http.post("/v1/chat/completions", json=chat("tiny", max_tokens=4))
    assert r2.status_code == 200
    assert time.monotonic() - t0 < 5


def test_metrics_count_requests_and_tokens(tiny_gateway: Gateway) -> None:
    def value(text: str, name: str) -> float:
        for line in text.splitlines():
            if (
                line.startswith(name + " ")
                or line.startswith(name + "{")
                and 'model="tiny"' in line
                and "status" not in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = tiny_gateway.http.get("/metrics").text
    tiny_gateway.http.post("/v1/chat/completions", json=chat("tiny", max_tokens=7))
    tiny_gateway.http.post("/v1/chat/completions", json=chat("nope"))
    after = tiny_gateway.http.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    assert value(text, "hearth_completion_tokens_total") - value(before, "hearth_completion_tokens_total") == 7
    assert 'hearth_requests_total{endpoint="/v1/chat/completions",model="unknown",status="404"}' in text
    assert 'hearth_workers{model="tiny",state="ready"} 1.0' in text
    assert value(text, "hearth_time_to_first_token_seconds_count") >= 1


@pytest.mark.skipif(openblas_path() is None, reason="OpenBLAS preloading applies on Linux with libopenblas0-pthread")
def test_workers_run_with_openblas_preloaded(tiny_gateway: Gateway) -> None:
    pid = tiny_gateway.workers("tiny")[0]["pid"]
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "openblas" in maps
