"""The Anthropic endpoints against the real gateway, with fake workers playing the model: what the
worker is sent (the translated input and params, ``tokenize``), and responses a random model
can't be made to give: tool calls, a stop sequence, a slow prefill (pings), a failure mid-stream.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import pytest

from shared.protocol import Cancel, Delta, Error, Generate, Tokenize, Tokens
from tests.e2e.test_anthropic import EVENT_ORDER
from tests.gateway.fakes import FakeWorker
from tests.gateway.gateways import fake_gateway
from tests.servers import Gateway

pytestmark = pytest.mark.timeout(60)

PING = 0.5  # server.sse_keepalive
TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
    {"name": "noop", "input_schema": {"type": "object"}},
]
CALL = {"index": 0, "id": "call_abc", "name": "get_weather", "arguments": '{"city": "Paris"}'}


@pytest.fixture(scope="module")
def gw(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [{"name": "ext", "aliases": ["claude-*"], "defaults": {"top_k": 7}}]
    server = {"request_wait": 2.0, "sse_keepalive": PING, "heartbeat_timeout": 5.0}
    with fake_gateway(tmp_path_factory, "anthropic-fake", endpoint, models, **server) as g:
        yield g


def post(
    pool: ThreadPoolExecutor, gw: Gateway, body: dict[str, Any], path: str = "/v1/messages"
) -> Future[httpx.Response]:
    def run() -> httpx.Response:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            return http.post(path, json=body)

    return pool.submit(run)


def events_of(r: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    out = []
    name = None
    for line in r.text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            assert data["type"] == name
            out.append((name, data))
    return out


CONVERSATION: dict[str, Any] = {
    "model": "claude-opus-9",
    "max_tokens": 100,
    "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=1.0; cch=abcde;"},
        {"type": "text", "text": "You are an agent."},
        {"type": "text", "text": "Use tools."},
    ],
    "tools": TOOLS,
    "tool_choice": {"type": "any"},
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Sunny"}]},
                {"type": "text", "text": "And Rome?"},
            ],
        },
    ],
}
EXPECTED_INPUT = {
    "messages": [
        {"role": "system", "content": "You are an agent.\n\nUse tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "user", "content": "And Rome?"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                **({"description": t["description"]} if "description" in t else {}),
                "parameters": t["input_schema"],
            },
        }  # fmt: skip
        for t in TOOLS
    ],
}


def test_tool_use_round_trip(gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor) -> None:
    fut = post(pool, gw, CONVERSATION)
    gen = worker.expect(Generate)
    assert gen.model == "ext"  # the alias resolved to the real model
    assert gen.input == EXPECTED_INPUT
    assert gen.params == {"max_tokens": 100, "top_k": 7, "tool_choice": "required"}
    worker.reply(gen.id, "Let me", " look.", tool_calls=[CALL], finish="tool_calls")
    r = fut.result(10)
    assert r.status_code == 200, r.text
    msg = r.json()
    assert msg["model"] == "claude-opus-9"
    assert msg["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_call_abc", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("tool_use", None)


def test_tool_use_streamed_through_the_sdk(gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0, timeout=30)

    def run() -> Any:
        with client.messages.stream(**CONVERSATION) as s:
            return list(s), s.get_final_message()

    fut = pool.submit(run)
    gen = worker.expect(Generate)
    second = {**CALL, "index": 1, "id": "toolu_xyz", "name": "noop", "arguments": "{}"}
    worker.reply(gen.id, "Hm.", tool_calls=[CALL, second], finish="tool_calls")
    _, final = fut.result(10)
    client.close()
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[1].id == "toolu_call_abc" and final.content[1].input == {"city": "Paris"}
    assert final.content[2].id == "toolu_xyz" and final.content[2].input == {}
    assert final.stop_reason == "tool_use"


def test_tool_use_event_sequence(gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor) -> None:
    fut = post(pool, gw, {**CONVERSATION, "stream": True})
    gen = worker.expect(Generate)
    worker.reply(gen.id, "A", "B", tool_calls=[CALL], finish="tool_calls")
    events = events_of(fut.result(10))
    names = " ".join(n for n, _ in events if n != "ping")
    text_block = "content_block_start( content_block_delta)+ content_block_stop"  # deltas may be merged
    tool_block = "content_block_start content_block_delta content_block_stop"
    assert re.fullmatch(f"message_start {text_block} {tool_block} message_delta message_stop", names), names
    data = [d for n, d in events if n not in ("ping", "content_block_delta") or d["index"] == 1]
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta" and d["index"] == 0) == "AB"
    assert data[3] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_call_abc", "name": "get_weather", "input": {}},
    }
    assert data[4]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Paris"}'}
    assert data[6]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


def test_stop_sequence_and_usage(gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor) -> None:
    body = {
        "model": "ext",
        "max_tokens": 5,
        "stop_sequences": ["END", "STOP"],
        "temperature": 0.5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    fut = post(pool, gw, body)
    gen = worker.expect(Generate)
    assert gen.params == {"max_tokens": 5, "top_k": 7, "temperature": 0.5, "stop": ["END", "STOP"]}
    assert "tools" not in gen.input
    worker.reply(
        gen.id, "one two", stop="STOP", usage={"prompt_tokens": 50, "completion_tokens": 3, "cached_tokens": 20}
    )
    msg = fut.result(10).json()
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("stop_sequence", "STOP")
    assert msg["usage"] == {
        "input_tokens": 30,
        "output_tokens": 3,
        "cache_read_input_tokens": 20,
        "cache_creation_input_tokens": 0,
    }
    fut = post(pool, gw, body)
    gen = worker.expect(Generate)
    worker.reply(gen.id, "one", finish="length")
    assert fut.result(10).json()["stop_reason"] == "max_tokens"


def test_pings_while_prefilling(gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor) -> None:
    fut = post(
        pool, gw, {"model": "ext", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    gen = worker.expect(Generate)
    time.sleep(PING * 4)  # a long prompt: no output yet
    worker.reply(gen.id, "ok")
    r = fut.result(10)
    assert r.status_code == 200
    names = [n for n, _ in events_of(r)]
    assert EVENT_ORDER.fullmatch(" ".join(names)), names
    assert names[0] == "message_start" and names[1] == "ping"
    assert names.index("content_block_start") >= 3  # pings came before the first token


def test_error_mid_stream_is_an_error_event(gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor) -> None:
    fut = post(
        pool, gw, {"model": "ext", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    gen = worker.expect(Generate)
    worker.send(Error(gen.id, "generation_failed", "the step blew up"))  # before any output: plain JSON
    r = fut.result(10)
    assert r.status_code == 502 and r.json()["error"] == {"type": "api_error", "message": "the step blew up"}

    fut = post(
        pool, gw, {"model": "ext", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    gen = worker.expect(Generate)
    worker.send(Delta(gen.id, "partial", 1))
    time.sleep(PING)
    worker.send(Error(gen.id, "generation_failed", "the step blew up"))
    events = events_of(fut.result(10))
    names = [n for n, _ in events if n != "ping"]
    assert names == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert events[-1][1] == {"type": "error", "error": {"type": "api_error", "message": "the step blew up"}}


def test_context_error_before_and_after_the_stream_starts(
    gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor
) -> None:
    body = {"model": "ext", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    fut = post(pool, gw, body)
    gen = worker.expect(Generate)
    worker.send(
        Error(gen.id, "context_length_exceeded", "the prompt has 9000 tokens; the model's context is 2048 tokens")
    )
    r = fut.result(10)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"].startswith("prompt is too long: the prompt has 9000 tokens")


def test_count_tokens_asks_a_worker(gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor) -> None:
    body = {k: v for k, v in CONVERSATION.items() if k != "max_tokens"}
    fut = post(pool, gw, body, "/v1/messages/count_tokens")
    tok = worker.expect(Tokenize)
    assert tok.input == EXPECTED_INPUT  # exactly what /v1/messages sends as Generate.input
    worker.send(Tokens(tok.id, 1234))
    r = fut.result(10)
    assert r.status_code == 200 and r.json() == {"input_tokens": 1234}

    fut = post(pool, gw, body, "/v1/messages/count_tokens")
    tok = worker.expect(Tokenize)
    worker.send(Error(tok.id, "invalid_request", "the chat template refused the messages"))
    r = fut.result(10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"

    fut = post(pool, gw, body, "/v1/messages/count_tokens")
    worker.expect(Tokenize)  # and never answered
    r = fut.result(10)
    assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded_error"


def test_count_tokens_without_a_worker(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        r = http.post(
            "/v1/messages/count_tokens", json={"model": "ext", "messages": [{"role": "user", "content": "x"}]}
        )
    assert r.status_code == 503 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "overloaded_error"


def test_a_request_the_worker_finishes_is_not_cancelled(
    gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor
) -> None:
    fut = post(pool, gw, {"model": "ext", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    gen = worker.expect(Generate)
    worker.reply(gen.id, "fine")
    assert fut.result(10).status_code == 200
    assert not [m for m in worker.pending(0.3) if isinstance(m, Cancel)]


def test_a_client_that_leaves_mid_stream_cancels_the_generation(gw: Gateway, worker: FakeWorker) -> None:
    body = {"model": "ext", "max_tokens": 500, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gw.url, timeout=30) as http, http.stream("POST", "/v1/messages", json=body) as r:
        gen = worker.expect(Generate)
        worker.send(Delta(gen.id, "Hello", 1))
        lines = r.iter_lines()
        assert next(lines) == "event: message_start"
    # the connection is gone: the gateway tells the worker to stop
    assert worker.expect(Cancel, timeout=10).id == gen.id


def test_reasoning_and_text_keep_their_order_when_deltas_merge(
    gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor
) -> None:
    """Deltas that queue up are merged for a slow reader, but reasoning never moves in front of
    text that came before it: thinking, text, thinking again, text, then the call."""
    fut = post(pool, gw, {**CONVERSATION, "thinking": {"type": "enabled", "budget_tokens": 50}})
    gen = worker.expect(Generate)
    assert gen.input["enable_thinking"] is True and gen.params["thinking_budget"] == 50
    for n, (reasoning, text) in enumerate([("a", ""), ("b", ""), ("", "c"), ("", "d"), ("e", ""), ("", "f")], 1):
        worker.send(Delta(gen.id, text, n, reasoning=reasoning))
    worker.reply(gen.id, tool_calls=[CALL], finish="tool_calls")
    msg = fut.result(10).json()
    assert [(b["type"], b.get("thinking", b.get("text"))) for b in msg["content"]] == [
        ("thinking", "ab"),
        ("text", "cd"),
        ("thinking", "e"),
        ("text", "f"),
        ("tool_use", None),
    ]
    assert all(b["signature"] for b in msg["content"] if b["type"] == "thinking")
