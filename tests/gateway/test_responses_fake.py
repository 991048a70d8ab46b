"""The Responses endpoint against the real gateway, with fake workers playing the model: what the
worker is sent, and answers a random model can't be made to give: a namespaced call, text then
a call, keep-alives while the first token is slow, a failure before and after the stream
starts (and the stored failed response)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from shared.protocol import Delta, Done, Error, Generate
from tests.gateway.fakes import FakeWorker
from tests.gateway.gateways import fake_gateway
from tests.servers import Gateway

pytestmark = pytest.mark.timeout(60)

TICK = 0.5  # server.sse_keepalive
USAGE = {"prompt_tokens": 40, "completion_tokens": 3, "cached_tokens": 30}
NS_TOOL = {
    "type": "namespace",
    "name": "agents",
    "description": "sub-agents",
    "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object", "properties": {}}}],
}


@pytest.fixture(scope="module")
def gw(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [{"name": "ext", "defaults": {"top_k": 7}}]
    server = {"request_wait": 2.0, "sse_keepalive": TICK, "heartbeat_timeout": 5.0}
    with fake_gateway(tmp_path_factory, "responses-fake", endpoint, models, **server) as g:
        yield g


def post(pool: ThreadPoolExecutor, gw: Gateway, body: dict[str, Any]) -> Future[httpx.Response]:
    def run() -> httpx.Response:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            return http.post("/v1/responses", json=body)

    return pool.submit(run)


def events_of(r: httpx.Response) -> list[dict[str, Any]]:
    out = []
    name = None
    for line in r.text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            assert data["type"] == name
            out.append(data)
    return out


def test_what_the_worker_gets_and_a_namespaced_call_coming_back(
    gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor
) -> None:
    body = {
        "model": "ext",
        "instructions": "Be an agent.",
        "input": [{"role": "developer", "content": "Rules."}, {"role": "user", "content": "go"}],
        "tools": [NS_TOOL, {"type": "web_search"}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "temperature": 0.2,
        "max_output_tokens": 50,
        "prompt_cache_key": "session-9",
    }
    fut = post(pool, gw, body)
    gen = worker.expect(Generate)
    assert gen.input["messages"] == [
        {"role": "system", "content": "Be an agent.\n\nRules."},
        {"role": "user", "content": "go"},
    ]
    assert [t["function"]["name"] for t in gen.input["tools"]] == ["agents.spawn"]
    assert gen.params["top_k"] == 7 and gen.params["temperature"] == 0.2 and gen.params["max_tokens"] == 50
    assert gen.params["tool_choice"] == "auto" and gen.params["parallel_tool_calls"] is False
    worker.send(Delta(gen.id, "Spawning.", 2))
    worker.send(
        Delta(gen.id, "", 3, tool_calls=[{"index": 0, "id": "call_7", "name": "agents.spawn", "arguments": "{}"}])
    )
    worker.send(Done(gen.id, "tool_calls", USAGE))
    r = fut.result(10)
    assert r.status_code == 200, r.text
    assert r.headers["x-hearth-tools-left-out"] == "web_search"
    out = r.json()
    msg, call = out["output"]
    assert msg["content"][0]["text"] == "Spawning."
    assert (call["namespace"], call["name"], call["call_id"]) == ("agents", "spawn", "call_7")
    assert out["usage"]["input_tokens_details"] == {"cached_tokens": 30}
    assert out["status"] == "completed"

    # the call and its output go back as the worker's tool_calls and tool messages
    follow = {
        **body,
        "previous_response_id": out["id"],
        "input": [{"type": "function_call_output", "call_id": "call_7", "output": "spawned"}],
    }
    fut = post(pool, gw, follow)
    gen = worker.expect(Generate)
    assert gen.input["messages"][1:] == [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "Spawning.",
            "tool_calls": [
                {"id": "call_7", "type": "function", "function": {"name": "agents.spawn", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": "spawned"},
    ]
    worker.reply(gen.id, "ok")
    assert fut.result(10).status_code == 200


def test_keepalives_while_the_first_token_is_slow(gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor) -> None:
    fut = post(pool, gw, {"model": "ext", "input": "hi", "stream": True})
    gen = worker.expect(Generate)
    time.sleep(TICK * 4)  # a long prompt: no output yet
    worker.reply(gen.id, "ok")
    r = fut.result(10)
    assert r.status_code == 200
    assert r.text.count(": keep-alive") >= 2
    kinds = [e["type"] for e in events_of(r)]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


def test_a_failure_before_and_after_the_stream_starts(
    gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor
) -> None:
    fut = post(pool, gw, {"model": "ext", "input": "hi", "stream": True})
    gen = worker.expect(Generate)
    worker.send(Error(gen.id, "context_length_exceeded", "the prompt has 9000 tokens; the context is 2048"))
    r = fut.result(10)  # at once: a plain JSON error, naming the Responses API's parameter
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"

    fut = post(pool, gw, {"model": "ext", "input": "hi", "stream": True})
    gen = worker.expect(Generate)
    worker.send(Delta(gen.id, "partial", 1))
    time.sleep(TICK)
    worker.send(Error(gen.id, "generation_failed", "the step blew up"))
    events = events_of(fut.result(10))
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-2]["code"] == "generation_failed" and events[-2]["message"] == "the step blew up"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"] == "the step blew up"
    assert failed["output"][0]["content"][0]["text"] == "partial"
    stored = gw.http.get(f"/v1/responses/{failed['id']}")
    assert stored.status_code == 200 and stored.json()["status"] == "failed"

    fut = post(pool, gw, {"model": "ext", "input": "hi"})  # not streamed: the error is the answer
    gen = worker.expect(Generate)
    worker.send(Delta(gen.id, "partial", 1))
    worker.send(Error(gen.id, "generation_failed", "the step blew up"))
    r = fut.result(10)
    assert r.status_code == 502 and r.json()["error"]["message"] == "the step blew up"
