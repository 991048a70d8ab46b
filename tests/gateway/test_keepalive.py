"""SSE keep-alives: a stream whose first token is slow (a long prompt prefilling, a queue) gets
SSE comments until it comes, then the normal chunks; an error meanwhile is an in-band event.
A fake worker over the real sockets decides when the first token comes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from shared.protocol import ERROR_GENERATION, Delta, Done, Error, Generate
from tests.gateway.fakes import FakeWorker
from tests.gateway.gateways import fake_gateway
from tests.gateway.test_fake_workers import USAGE
from tests.servers import Gateway, chat

pytestmark = pytest.mark.timeout(60)
KEEPALIVE = 0.3


@pytest.fixture(scope="module")
def gw(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with fake_gateway(tmp_path_factory, "keepalive", endpoint, [{"name": "ext"}], sse_keepalive=KEEPALIVE) as g:
        yield g


def read_lines(url: str, body: dict[str, Any]) -> tuple[int, list[str]]:
    with httpx.Client(base_url=url, timeout=30) as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        return r.status_code, [line for line in r.iter_lines() if line]


def test_a_slow_first_token_gets_keepalive_comments_then_the_answer(gw: Gateway, worker: FakeWorker) -> None:
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(read_lines, gw.url, chat("ext", "a long prompt", stream=True))
        gen = worker.expect(Generate)
        time.sleep(KEEPALIVE * 5)  # "prefilling"
        worker.send(Delta(gen.id, "Hi", 1))
        worker.send(Done(gen.id, "stop", USAGE))
        status, lines = fut.result(10)
    assert status == 200
    comments = [line for line in lines if line.startswith(":")]
    assert len(comments) >= 3, lines
    data = [line for line in lines if line.startswith("data: ")]
    assert lines.index(comments[-1]) < lines.index(data[0]), "comments come only before the first chunk"
    events = [json.loads(d[6:]) for d in data[:-1]]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "Hi"
    assert events[-1]["choices"][0]["finish_reason"] == "stop" and data[-1] == "data: [DONE]"


def test_a_fast_first_token_gets_no_comment(gw: Gateway, worker: FakeWorker) -> None:
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(read_lines, gw.url, chat("ext", "short", stream=True))
        gen = worker.expect(Generate)
        worker.send(Delta(gen.id, "Hi", 1))
        worker.send(Done(gen.id, "stop", USAGE))
        status, lines = fut.result(10)
    assert status == 200 and not [line for line in lines if line.startswith(":")]


def test_an_error_after_keepalives_is_an_in_band_error_event(gw: Gateway, worker: FakeWorker) -> None:
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(read_lines, gw.url, chat("ext", "doomed", stream=True))
        gen = worker.expect(Generate)
        time.sleep(KEEPALIVE * 3)
        worker.send(Error(gen.id, ERROR_GENERATION, "the model fell over"))
        status, lines = fut.result(10)
    assert status == 200
    assert lines[0].startswith(":")
    (err,) = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert "the model fell over" in err["error"]["message"]
