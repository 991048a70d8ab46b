"""Tool calls through the real gateway process, with a scripted fake worker sending the wire
protocol's tool-call deltas: what reaches the worker (tools, tool_choice, tool messages) and
the OpenAI response shapes, streaming and not, also as the official ``openai`` client parses them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from shared.protocol import Delta, Done, Generate
from tests.gateway.fakes import FakeWorker
from tests.gateway.gateways import fake_gateway, ready_fake
from tests.servers import TOOLS, Gateway, sse_events

pytestmark = pytest.mark.timeout(60)

MODEL = "toolie"
CALL_A = {"index": 0, "id": "call_0a1b2c", "name": "get_weather", "arguments": '{"city": "Köln"}'}
CALL_B = {"index": 1, "id": "call_3d4e5f", "name": "get_time", "arguments": "{}"}
USAGE = {"prompt_tokens": 50, "completion_tokens": 20, "cached_tokens": 0}


@pytest.fixture(scope="module")
def gw(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [{"name": MODEL, "preload": True, "max_batch": 4}]
    with fake_gateway(tmp_path_factory, "tool-calls", endpoint, models, request_wait=10.0) as g:
        yield g


@pytest.fixture(scope="module")
def worker(gw: Gateway, endpoint: str) -> Iterator[FakeWorker]:
    """One fake worker for the whole module (it answers each test's requests in turn)."""
    with ready_fake(gw, endpoint, MODEL) as w:
        yield w


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Weather in Köln?"}], "tools": TOOLS, **extra}


def post(gw: Gateway, data: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        return http.post("/v1/chat/completions", json=data)


def stream(gw: Gateway, data: dict[str, Any]) -> list[Any]:
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json={**data, "stream": True}) as r:
            assert r.status_code == 200, r.read()
            return sse_events(r)


def play(w: FakeWorker, script: list[Delta | Done]) -> Generate:
    """Take the next generate and answer it with ``script`` (ids filled in)."""
    gen = w.expect(Generate, timeout=10)
    for msg in script:
        if isinstance(msg, Delta):
            w.send(Delta(gen.id, msg.text, msg.tokens, msg.logprobs, msg.tool_calls))
        else:
            w.send(Done(gen.id, msg.finish_reason, msg.usage, msg.timings))
    return gen


TEXT_THEN_TWO_CALLS: list[Delta | Done] = [
    Delta("", "Let me check.", 3),
    Delta("", "", 12, None, [CALL_A]),
    Delta("", "", 20, None, [CALL_B]),
    Done("", "tool_calls", USAGE),
]


def test_tools_and_tool_messages_reach_the_worker_as_the_contract_says(
    gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor
) -> None:
    messages = [
        {"role": "user", "content": "Weather in Köln?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    fut: Future[httpx.Response] = pool.submit(
        post, gw, body(messages=messages, tool_choice={"type": "function", "function": {"name": "get_time"}})
    )
    gen = play(worker, [Delta("", "ok", 1), Done("", "stop", USAGE)])
    assert fut.result(30).status_code == 200
    assert gen.input["tools"] == TOOLS
    assert gen.input["messages"][1] == {"role": "assistant", "content": "", "tool_calls": messages[1]["tool_calls"]}
    assert gen.input["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert gen.params["tool_choice"] == {"name": "get_time"}
    assert "parallel_tool_calls" not in gen.params

    fut = pool.submit(post, gw, body(parallel_tool_calls=False))
    gen = play(worker, [Delta("", "ok", 1), Done("", "stop", USAGE)])
    assert fut.result(30).status_code == 200
    assert gen.params["tool_choice"] == "auto" and gen.params["parallel_tool_calls"] is False


def test_non_streaming_response_has_tool_calls_and_null_content(
    gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor
) -> None:
    fut = pool.submit(post, gw, body())
    play(worker, [Delta("", "", 12, None, [CALL_A]), Done("", "tool_calls", USAGE)])
    r = fut.result(30)
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": CALL_A["id"],
                "type": "function",
                "function": {"name": "get_weather", "arguments": CALL_A["arguments"]},
            }
        ],
    }


def test_non_streaming_keeps_text_beside_the_calls(gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor) -> None:
    fut = pool.submit(post, gw, body())
    play(worker, TEXT_THEN_TWO_CALLS)
    choice = fut.result(30).json()["choices"][0]
    assert choice["message"]["content"] == "Let me check."
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_weather", "get_time"]
    assert [c["id"] for c in choice["message"]["tool_calls"]] == [CALL_A["id"], CALL_B["id"]]


def test_streaming_sends_each_call_whole_in_one_chunk(
    gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor
) -> None:
    fut = pool.submit(stream, gw, body())
    play(worker, [*TEXT_THEN_TWO_CALLS[:3], Delta("", " Done.", 21), Done("", "tool_calls", USAGE)])
    events = fut.result(30)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    finishes = [e["choices"][0]["finish_reason"] for e in events[:-1]]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert calls == [
        {
            "index": c["index"],
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for c in (CALL_A, CALL_B)
    ]
    # Order survives coalescing: the text, the calls, then the text written after them.
    order: list[tuple[str, Any]] = []
    for d in deltas:
        if d.get("content"):
            if order and order[-1][0] == "text":
                order[-1] = ("text", order[-1][1] + d["content"])
            else:
                order.append(("text", d["content"]))
        order += [("call", c["index"]) for c in d.get("tool_calls", [])]
    assert order == [("text", "Let me check."), ("call", 0), ("call", 1), ("text", " Done.")]


def test_the_openai_client_parses_tool_calls(gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor) -> None:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=30)
    fut = pool.submit(
        lambda: client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Weather in Köln?"}],
            tools=TOOLS,  # type: ignore[arg-type]
        )
    )
    play(worker, TEXT_THEN_TWO_CALLS)
    out = fut.result(30)
    msg = out.choices[0].message
    assert out.choices[0].finish_reason == "tool_calls"
    assert msg.tool_calls is not None and len(msg.tool_calls) == 2
    first = msg.tool_calls[0]
    assert first.type == "function" and first.id == CALL_A["id"]
    assert first.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(first.function.arguments) == {"city": "Köln"}  # type: ignore[union-attr]

    def streamed() -> tuple[dict[int, dict[str, str]], str | None]:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for chunk in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Weather?"}],
            tools=TOOLS,  # type: ignore[arg-type]
            stream=True,
        ):
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            finish = choice.finish_reason or finish
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += tc.id or ""
                entry["name"] += (tc.function.name or "") if tc.function else ""
                entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
        return calls, finish

    sfut = pool.submit(streamed)
    play(worker, TEXT_THEN_TWO_CALLS)
    calls, finish = sfut.result(30)
    assert finish == "tool_calls"
    assert calls == {
        0: {"id": CALL_A["id"], "name": "get_weather", "arguments": CALL_A["arguments"]},
        1: {"id": CALL_B["id"], "name": "get_time", "arguments": "{}"},
    }


def test_tool_choice_none_and_bad_shapes(gw: Gateway, worker: FakeWorker, pool: ThreadPoolExecutor) -> None:
    fut = pool.submit(post, gw, body(tool_choice="none"))
    gen = play(worker, [Delta("", "plain", 1), Done("", "stop", USAGE)])
    assert fut.result(30).json()["choices"][0]["message"] == {"role": "assistant", "content": "plain"}
    assert gen.params["tool_choice"] == "none"
    r = post(gw, body(tool_choice={"type": "function", "function": {"name": "nope"}}))
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    r = post(gw, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "function_call": "auto"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "function_call"
    assert "tool_choice" in r.json()["error"]["message"]
