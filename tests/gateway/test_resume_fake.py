"""Resuming, as the gateway does it, with a fake worker (see ``fakes.py``) whose connection
breaks: a ``hello`` from a connected worker settles its requests as if it had died, and the
fake then plays the replacement. What the resumed ``generate`` carries, what the client sees,
and the poison hunt's probation (suspects run one at a time) come out exactly."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from shared.protocol import Delta, Done, Error, Generate
from tests.gateway.fakes import FakeWorker
from tests.gateway.gateways import fake_gateway
from tests.servers import Gateway, chat

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def gw(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [{"name": "ext", "preload": True, "max_batch": 4}]
    with fake_gateway(tmp_path_factory, "resume-fake", endpoint, models, heartbeat_timeout=5.0, request_wait=5.0) as g:
        yield g


def stream(gw: Gateway, prompt: str) -> dict[str, Any]:
    body = chat("ext", prompt, stream=True, stream_options={"include_usage": True})
    out: dict[str, Any] = {"text": "", "errors": [], "done": 0, "usage": None}
    with httpx.Client(base_url=gw.url, timeout=30) as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line == "data: [DONE]":
                out["done"] += 1
            elif line.startswith("data: "):
                ev = json.loads(line[6:])
                if "error" in ev:
                    out["errors"].append(ev["error"]["code"])
                for c in ev.get("choices", []):
                    out["text"] += c["delta"].get("content") or ""
                out["usage"] = ev.get("usage") or out["usage"]
    return out


def reconnect(w: FakeWorker) -> None:
    """The fake's connection "broke and came back": the gateway settles what it held."""
    w.hello()
    w.state("ready")


def test_the_resumed_generate_carries_what_the_client_has_and_the_stream_goes_on(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w = fakes()
    fut = pool.submit(stream, gw, "hi")
    gen = w.expect(Generate)
    assert "resume" not in gen.params
    w.send(Delta(gen.id, "Hé", 2, token_ids=[7, 8]))
    w.send(Delta(gen.id, "", 3, reasoning="hmm", token_ids=[9]))
    w.send(Delta(gen.id, "llo", 5, token_ids=[10, 11]))
    reconnect(w)
    again = w.expect(Generate)
    assert again.id == gen.id and again.input == gen.input
    assert again.params == {
        **gen.params,
        "resume": {"tokens": [7, 8, 9, 10, 11], "text": 5, "tool_calls": 0, "reasoning": 3},
    }
    w.send(Delta(gen.id, " world", 6, token_ids=[12]))
    w.send(Done(gen.id, "stop", {"prompt_tokens": 4, "completion_tokens": 6, "cached_tokens": 0}))
    got = fut.result(10)
    assert got["errors"] == [] and got["done"] == 1
    assert got["text"] == "Héllo world"
    assert got["usage"]["completion_tokens"] == 6 and got["usage"]["prompt_tokens"] == 4
    assert got["usage"]["resumed"] == 1


def test_alone_on_two_workers_that_died_it_fails_as_a_poison_request(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    """Alone on its worker twice: the second death is charged to it, and it fails as poison."""
    w = fakes()
    fut = pool.submit(stream, gw, "alone")
    gen = w.expect(Generate)
    w.send(Delta(gen.id, "a", 1, token_ids=[1]))
    reconnect(w)
    again = w.expect(Generate)
    assert again.params["resume"]["tokens"] == [1]
    w.send(Delta(gen.id, "b", 2, token_ids=[2]))
    reconnect(w)
    got = fut.result(10)
    assert got["text"] == "ab" and got["errors"] == ["poison_request"] and got["done"] == 0


def test_several_suspects_run_one_at_a_time_and_the_culprit_is_found(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w = fakes()
    futs: dict[str, Future[dict[str, Any]]] = {p: pool.submit(stream, gw, p) for p in ("p1", "p2")}
    gens = {g.input["messages"][-1]["content"]: g for g in (w.expect(Generate), w.expect(Generate))}
    for n, g in enumerate(gens.values()):
        w.send(Delta(g.id, "x", 1, token_ids=[n]))
    reconnect(w)  # death 1: nobody known, both charged, both resumed together
    resumed = [w.expect(Generate), w.expect(Generate)]
    assert all("resume" in g.params for g in resumed)
    for g in resumed:
        w.send(Delta(g.id, "y", 2, token_ids=[5]))
    reconnect(w)  # death 2: two suspects, nobody charged, they run on probation one at a time
    first = w.expect(Generate)
    assert not [m for m in w.pending(0.5) if isinstance(m, Generate)]  # the other one waits
    w.send(Delta(first.id, "z", 3, token_ids=[6]))
    w.send(Done(first.id, "length", {"prompt_tokens": 3, "completion_tokens": 3, "cached_tokens": 0}))
    second = w.expect(Generate)  # the slot is free: the other suspect runs now
    tokens = {g.id: [n, 5] for n, g in enumerate(gens.values())}  # each one's, all it generated
    assert first.params["resume"]["tokens"] == tokens[first.id]
    assert second.id != first.id and second.params["resume"]["tokens"] == tokens[second.id]
    reconnect(w)  # death 3, with only the suspect on probation there: it is the culprit
    done = {p: f.result(10) for p, f in futs.items()}
    by_id = {g.id: p for p, g in gens.items()}
    assert done[by_id[first.id]]["text"] == "xyz" and done[by_id[first.id]]["errors"] == []
    assert done[by_id[first.id]]["usage"]["resumed"] == 2
    assert done[by_id[second.id]]["text"] == "xy" and done[by_id[second.id]]["errors"] == ["poison_request"]


def test_a_resume_turned_away_by_its_worker_is_sent_again_as_it_was(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w = fakes()
    fut = pool.submit(stream, gw, "away")
    gen = w.expect(Generate)
    w.send(Delta(gen.id, "a", 1, token_ids=[3]))
    reconnect(w)
    resumed = w.expect(Generate)
    w.send(Error(gen.id, "not_ready", "the worker is draining"))
    again = w.expect(Generate)
    assert again.params == resumed.params and again.params["resume"]["tokens"] == [3]
    w.send(Delta(gen.id, "b", 2, token_ids=[4]))
    w.send(Done(gen.id, "stop", {"prompt_tokens": 2, "completion_tokens": 2, "cached_tokens": 0}))
    got = fut.result(10)
    assert got["text"] == "ab" and got["errors"] == [] and got["usage"]["resumed"] == 1
