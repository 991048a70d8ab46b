"""Two models, two workers, one of them loading: probes, isolation and the real SmolLM2.

The SmolLM2 GGUF is imported into a fresh cache folder, so its worker spends several seconds
loading while the tiny model already serves: /health must answer at once, /ready must say 503
with both models listed, the tiny model must keep streaming, and a request for SmolLM2 waits
and then answers "Paris".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Gateway, chat, sse_events, serving


@pytest.fixture(scope="module")
def two_models(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("two-models")
    # tools "off": the refusal below; the generic tool format is tested in test_structured.py
    models = [{"name": "tiny", "path": str(tiny_model)}, {"name": "smol", "path": "default", "tools": "off"}]
    with serving(tmp, models, env={"HEARTH_CACHE_DIR": str(tmp / "cache")}, ready=False) as gw:
        yield gw


def test_probes_while_loading_then_paris(two_models: Gateway) -> None:
    http = two_models.http
    t0 = time.monotonic()
    assert http.get("/health").status_code == 200
    assert time.monotonic() - t0 < 1.0

    r = http.get("/ready")
    assert r.status_code == 503
    assert set(r.json()["models"]) == {"tiny", "smol"}
    assert r.json()["models"]["smol"]["state"] in ("starting", "loading")

    # The tiny model gets ready first and streams while SmolLM2 is still importing/loading.
    deadline = time.monotonic() + 60
    while http.get("/ready").json()["models"]["tiny"]["state"] != "ready":
        assert time.monotonic() < deadline, two_models.log()
        time.sleep(0.1)
    smol_before = http.get("/ready").json()["models"]["smol"]["state"]
    with http.stream("POST", "/v1/chat/completions", json=chat("tiny", max_tokens=30, stream=True)) as s:
        events = sse_events(s)
    assert events[-1] == "[DONE]"
    health_times = []
    for _ in range(5):
        t = time.monotonic()
        assert http.get("/health").status_code == 200
        health_times.append(time.monotonic() - t)
    assert max(health_times) < 0.5
    smol_after = http.get("/ready").json()["models"]["smol"]["state"]
    assert smol_before in ("starting", "loading"), "SmolLM2 loaded before the tiny model streamed"
    assert smol_after in ("starting", "loading", "ready")

    # A request for the loading model waits, then completes with the real answer.
    question = chat("smol", "What is the capital of France? Answer briefly.", max_tokens=20)
    r = http.post("/v1/chat/completions", json=question, timeout=180)
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]

    ready = http.get("/ready")
    assert ready.status_code == 200
    models = ready.json()["models"]
    assert models["tiny"]["state"] == models["smol"]["state"] == "ready"
    pids = {models["tiny"]["workers"][0]["pid"], models["smol"]["workers"][0]["pid"]}
    assert len(pids) == 2  # one worker process per model


def test_both_models_stream_at_once(two_models: Gateway) -> None:
    import concurrent.futures

    two_models.wait_ready()

    def run(model: str) -> list:
        with two_models.http.stream(
            "POST", "/v1/chat/completions", json=chat(model, "Hi", max_tokens=16, stream=True)
        ) as s:
            return sse_events(s)

    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        a, b = ex.map(run, ["tiny", "smol"])
    assert a[-1] == b[-1] == "[DONE]"
    assert a[0]["model"] == "tiny" and b[0]["model"] == "smol"


def test_the_second_turn_reuses_the_first_from_the_prompt_cache(two_models: Gateway) -> None:
    two_models.wait_ready()
    turn1 = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]
    r1 = two_models.http.post(
        "/v1/chat/completions", json={"model": "smol", "messages": turn1, "max_tokens": 20, "temperature": 0}
    )
    answer = r1.json()["choices"][0]["message"]["content"]
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And of Italy?"}]
    r2 = two_models.http.post(
        "/v1/chat/completions", json={"model": "smol", "messages": turn2, "max_tokens": 20, "temperature": 0}
    )
    assert r2.status_code == 200
    assert r2.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= r1.json()["usage"]["prompt_tokens"]
    assert "Rome" in r2.json()["choices"][0]["message"]["content"]


def test_sixteen_concurrent_greedy_requests_answer_as_they_do_alone(two_models: Gateway) -> None:
    """Batch isolation on the real model: a peer once leaked content across batched requests."""
    import concurrent.futures

    two_models.wait_ready()
    topics = ["France", "Italy", "Spain", "Japan", "Egypt", "Peru", "Canada", "Kenya"]
    bodies = [
        {
            "model": "smol",
            "messages": [{"role": "user", "content": f"{q} {t}?"}],
            "temperature": 0,
            "max_tokens": 12,
        }
        for t in topics
        for q in ("What is the capital of", "Name a famous food from")
    ]

    def ask(body: dict) -> str:  # type: ignore[type-arg]
        r = two_models.http.post("/v1/chat/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, bodies))
    alone = [ask(b) for b in bodies]
    assert together == alone
    assert len(set(alone)) == len(alone)


def test_smollm2_template_has_no_tools_so_tools_are_refused(two_models: Gateway) -> None:
    """SmolLM2's chat template renders only role and content: tools are a 400 naming ``tools``
    (never silently dropped), while a history with tool results still renders and answers."""
    two_models.wait_ready()
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    r = two_models.http.post("/v1/chat/completions", json=chat("smol", "Weather in Paris?", tools=[tool]))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tools"
    assert "does not support tools" in r.json()["error"]["message"]
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    r = two_models.http.post(
        "/v1/chat/completions", json={"model": "smol", "messages": history, "max_tokens": 8, "temperature": 0}
    )
    assert r.status_code == 200, r.text


def test_smol_answers_paris_through_the_messages_api(two_models: Gateway) -> None:
    """The real model through the Anthropic Messages API (after the test above, SmolLM2 is loaded)."""
    body = {
        "model": "smol",
        "max_tokens": 20,
        "temperature": 0,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=1;"}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is the capital of France? Answer briefly."}]}
        ],
    }
    r = two_models.http.post("/v1/messages", json=body, timeout=180)
    assert r.status_code == 200, r.text
    msg = r.json()
    assert msg["type"] == "message" and msg["content"][0]["type"] == "text"
    assert "Paris" in msg["content"][0]["text"]
    assert msg["stop_reason"] in ("end_turn", "max_tokens")
