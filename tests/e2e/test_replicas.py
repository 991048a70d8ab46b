"""Two replicas of one model: requests spread over both, and a conversation's next turn goes
back to the replica that holds its KV prompt cache."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import Gateway, chat, serving


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with serving(tmp_path_factory.mktemp("replicas"), [{"name": "tiny", "path": str(tiny_model), "replicas": 2}]) as g:
        deadline = time.monotonic() + 60  # /ready needs one ready replica; these tests want both
        while [w["state"] for w in g.workers("tiny")] != ["ready", "ready"]:
            assert time.monotonic() < deadline, g.log()
            time.sleep(0.05)
        yield g


def wait_idle(gw: Gateway) -> None:
    """Until the gateway has settled earlier tests' requests (a client's disconnect takes a moment)."""
    deadline = time.monotonic() + 10
    while any(w["inflight"] for w in gw.workers("tiny")):
        assert time.monotonic() < deadline, gw.workers("tiny")
        time.sleep(0.02)


def post(gw: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    r = gw.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def no_eos(tiny_model: Path) -> dict[str, float]:
    """A logit_bias that bans the end-of-turn token, so a request runs its full max_tokens."""
    vocab = json.loads((tiny_model / "tokenizer.json").read_text())["model"]["vocab"]
    return {str(vocab["<|im_end|>"]): -100}


def test_two_worker_processes_share_the_load(gw: Gateway, tiny_model: Path) -> None:
    wait_idle(gw)
    workers = gw.workers("tiny")
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    body = chat("tiny", max_tokens=20000, stream=True, logit_bias=no_eos(tiny_model))
    other = {**body, "messages": [{"role": "user", "content": "b"}]}
    # (each line iterator is kept: dropping one closes its connection, and the gateway cancels)
    with gw.http.stream("POST", "/v1/chat/completions", json=body) as a:
        lines_a = a.iter_lines()
        next(lines_a)
        with gw.http.stream("POST", "/v1/chat/completions", json=other) as b:
            lines_b = b.iter_lines()
            next(lines_b)
            assert [w["inflight"] for w in gw.workers("tiny")] == [1, 1]


def test_the_next_turn_goes_back_to_the_replica_with_the_cache(gw: Gateway, tiny_model: Path) -> None:
    """Turn 1 lands on the second replica (the first is busy); turn 2, with both idle, would go
    to the first replica by load alone. It goes to the second, and reuses turn 1's KV cache."""
    turn1 = [{"role": "user", "content": "Remember this long story about lighthouses and tides. " * 12}]
    wait_idle(gw)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        busy = ex.submit(post, gw, chat("tiny", "keep it busy", max_tokens=4000, logit_bias=no_eos(tiny_model)))
        while [w["inflight"] for w in gw.workers("tiny")] != [1, 0]:
            assert not busy.done()
            time.sleep(0.01)
        first = post(gw, {**chat("tiny", max_tokens=8), "messages": turn1})
        busy.result()
    answer = first["choices"][0]["message"]["content"]
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
    second = post(gw, {**chat("tiny", max_tokens=8), "messages": turn2})
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
