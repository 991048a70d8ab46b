"""The real gateway process over real ZeroMQ sockets, with fake workers driven by the test.

No MLX and no model: each test plays the worker side of the wire protocol itself (see
``fakes.py``), so it can answer, stall, fail, send garbage or go silent exactly when it wants.
The gateway's models have ``replicas = 0``: it spawns nothing, and only these fakes join.
HTTP calls block until the fake answers, so they run in threads while the test plays the worker.
"""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from shared.protocol import Cancel, Delta, Done, Drain, Error, Generate
from tests.gateway.fakes import FakeWorker
from tests.gateway.gateways import fake_gateway, ready_body, wait_until, worker_states
from tests.servers import Gateway, chat

pytestmark = pytest.mark.timeout(60)

HEARTBEAT_TIMEOUT = 3.0
REQUEST_WAIT = 2.0
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "cached_tokens": 0}


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [
        {"name": "ext", "preload": True, "max_batch": 1, "max_queue": 1, "defaults": {"repetition_penalty": 1.05}},
        {"name": "lonely", "preload": False},
    ]
    server = {"heartbeat_timeout": HEARTBEAT_TIMEOUT, "request_wait": REQUEST_WAIT}
    with fake_gateway(tmp_path_factory, "fake-workers", endpoint, models, **server) as g:
        yield g


# -- helpers ----------------------------------------------------------------------------------


def post(gw: Gateway, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        return http.post("/v1/chat/completions", json=body)


def content(gen: Generate) -> str:
    return gen.input["messages"][-1]["content"]


def answer(w: FakeWorker, gen: Generate, *parts: str, usage: dict[str, int] | None = None) -> None:
    for i, text in enumerate(parts):
        w.send(Delta(gen.id, text, i + 1))
    w.send(Done(gen.id, "stop", usage or USAGE))


def first_generate(workers: list[FakeWorker], timeout: float = 5.0) -> tuple[FakeWorker, Generate]:
    """Whichever worker the gateway picked, and the request it got."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in workers:
            try:
                msg = w.recv(0.02)
            except TimeoutError:
                continue
            assert isinstance(msg, Generate), msg
            return w, msg
    raise AssertionError("no worker received the request")


def delta_text(ev: Any) -> str | None:
    if isinstance(ev, dict) and ev.get("choices"):
        return ev["choices"][0]["delta"].get("content")
    return None


_END = object()


class Stream:
    """One streaming chat request read in a thread; its SSE events arrive as they come."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        gw: Gateway,
        body: dict[str, Any],
        close_after: Callable[[Any], bool] | None = None,
    ) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self.status: int | None = None
        self.body: bytes | None = None  # the whole body of a non-SSE answer
        self.future: Future[None] = pool.submit(self._run, gw.url, body, close_after)

    def _run(self, url: str, body: dict[str, Any], close_after: Callable[[Any], bool] | None) -> None:
        try:
            with (
                httpx.Client(base_url=url, timeout=30) as http,
                http.stream("POST", "/v1/chat/completions", json=body) as r,
            ):
                self.status = r.status_code
                if not r.headers.get("content-type", "").startswith("text/event-stream"):
                    self.body = r.read()
                    return
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        data = line[6:]
                        ev = data if data == "[DONE]" else json.loads(data)
                        self.events.put(ev)
                        if close_after is not None and close_after(ev):
                            return  # leaving the with blocks drops the connection mid-stream
        finally:
            self.events.put(_END)

    def next(self, timeout: float = 5.0) -> Any:
        try:
            ev = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no SSE event in {timeout}s") from None
        assert ev is not _END, f"the stream ended early (status {self.status}, body {self.body!r})"
        return ev

    def rest(self, timeout: float = 10.0) -> list[Any]:
        """Every event until the stream ends."""
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                ev = self.events.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"the stream did not end in {timeout}s; so far {out}") from None
            if ev is _END:
                self.future.result(5)  # re-raise what the reader hit, if anything
                return out
            out.append(ev)

    def json(self) -> Any:
        self.future.result(10)
        assert self.body is not None, f"expected a JSON answer, got an event stream (status {self.status})"
        return orjson.loads(self.body)


# -- 1. readiness -----------------------------------------------------------------------------


def test_ready_waits_for_a_ready_worker_then_lists_it(gw: Gateway, fakes: Callable[..., FakeWorker]) -> None:
    wait_until(lambda: not worker_states(gw, "ext"), timeout=HEARTBEAT_TIMEOUT + 3, what="no ext worker left")
    r = gw.http.get("/ready")
    assert r.status_code == 503
    body = r.json()
    assert body["ready"] is False
    assert body["models"]["ext"]["state"] == "starting" and body["models"]["ext"]["workers"] == []
    assert body["models"]["lonely"]["preload"] is False

    w = fakes(ready=False)
    w.hello()
    wait_until(lambda: w.worker_id in worker_states(gw, "ext"), what="the hello to register the worker")
    r = gw.http.get("/ready")
    assert r.status_code == 503, "a worker that said hello but is still loading must not make the gateway ready"
    assert r.json()["models"]["ext"]["state"] == "loading"
    assert worker_states(gw, "ext")[w.worker_id] == "loading"

    w.state("ready")
    wait_until(lambda: gw.http.get("/ready").status_code == 200, what="/ready 200")
    ext = ready_body(gw)["models"]["ext"]
    assert ext["state"] == "ready"
    (mine,) = [x for x in ext["workers"] if x["id"] == w.worker_id]
    assert mine["state"] == "ready" and mine["pid"] == os.getpid()

    models = {m["id"]: m for m in gw.http.get("/v1/models").json()["data"]}
    assert models["ext"]["state"] == "ready"
    assert {x["id"]: x["state"] for x in models["ext"]["workers"]}[w.worker_id] == "ready"
    assert models["lonely"]["state"] == "starting" and models["lonely"]["workers"] == []


# -- 2. translation both ways -----------------------------------------------------------------


def test_chat_becomes_generate_and_deltas_become_the_answer(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w = fakes()
    body = chat("ext", "Hi there", temperature=0.7, max_tokens=12, stop=["\n\n", "END"], top_p=0.9, seed=7)
    fut = pool.submit(post, gw, body)
    gen = w.expect(Generate)
    assert gen.model == "ext"
    assert gen.input == {"messages": [{"role": "user", "content": "Hi there"}]}
    assert gen.stream is False
    expected = {
        "temperature": 0.7,
        "max_tokens": 12,
        "stop": ["\n\n", "END"],
        "top_p": 0.9,
        "seed": 7,
        "repetition_penalty": 1.05,
    }
    assert {k: gen.params.get(k) for k in expected} == expected, gen.params
    assert "logprobs" not in gen.params

    answer(w, gen, "Hel", "lo")
    r = fut.result(10)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == f"chatcmpl-{gen.id}"
    assert out["object"] == "chat.completion" and out["model"] == "ext"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert out["choices"][0]["finish_reason"] == "stop"
    use = out["usage"]
    assert (use["prompt_tokens"], use["completion_tokens"], use["total_tokens"]) == (5, 2, 7)
    assert use["prompt_tokens_details"]["cached_tokens"] == 0

    # streaming: one chunk per delta when the client keeps up, then the finish, usage and [DONE]
    s = Stream(pool, gw, chat("ext", "Again", stream=True, stream_options={"include_usage": True}))
    gen = w.expect(Generate)
    assert gen.stream is True and content(gen) == "Again"
    w.send(Delta(gen.id, "Hel", 1))
    first = s.next()
    assert first["object"] == "chat.completion.chunk" and first["id"] == f"chatcmpl-{gen.id}"
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert delta_text(s.next()) == "Hel"
    w.send(Delta(gen.id, "lo", 2))
    assert delta_text(s.next()) == "lo"
    w.send(Done(gen.id, "stop", USAGE))
    rest = s.rest()
    assert s.status == 200
    assert rest[-1] == "[DONE]"
    assert [ev["choices"][0]["finish_reason"] for ev in rest if isinstance(ev, dict) and ev["choices"]] == ["stop"]
    (usage_chunk,) = [ev for ev in rest if isinstance(ev, dict) and ev.get("usage")]
    assert (usage_chunk["usage"]["prompt_tokens"], usage_chunk["usage"]["completion_tokens"]) == (5, 2)
    assert not [m for m in w.pending(0.3) if isinstance(m, Cancel)], "a finished request must not be cancelled"


# -- 3. garbage from a worker -----------------------------------------------------------------


def test_garbage_from_a_worker_does_not_kill_the_receive_loop(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w = fakes()
    log_start = gw.log_path.stat().st_size
    w.send_raw([b"just-one-frame"])
    w.send_raw([b"delta", b"{}", b"a third frame"])
    w.send_raw([b"bogus", b"{}"])
    w.send_raw([b"\xff\xfe", b"{}"])
    w.send_raw([b"delta", b"{not json"])
    w.send_raw([b"delta", b"[1, 2, 3]"])
    w.send_raw([b"delta", b""])
    w.send_raw([b"done", orjson.dumps({"id": "x"})])  # no finish_reason
    w.send_raw([b"delta", orjson.dumps({"id": "x", "text": 5, "tokens": 1})])
    w.send_raw([b"state", orjson.dumps({"state": "sleepy"})])
    w.send_raw([b"heartbeat", orjson.dumps({"running": "lots"})])
    w.send(Delta("no-such-request", "boo", 1))
    w.send(Done("no-such-request", "stop", USAGE))
    w.send(Error("no-such-request", "generation_failed", "nobody asked"))
    assert w.expect(Cancel).id == "no-such-request"  # output nobody reads is stopped

    fut = pool.submit(post, gw, chat("ext", "still there?"))
    gen = w.expect(Generate)
    answer(w, gen, "yes")
    r = fut.result(10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "yes"
    assert worker_states(gw, "ext")[w.worker_id] == "ready"
    log = gw.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert log.count("dropping") >= 10, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


# A required field sent as null is malformed: the codec drops it like any other bad message.


def test_a_delta_with_null_fields_is_dropped_as_malformed(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w = fakes()
    fut = pool.submit(post, gw, chat("ext", "nulls"))
    gen = w.expect(Generate)
    w.send_raw([b"delta", orjson.dumps({"id": gen.id, "text": None, "tokens": None})])
    answer(w, gen, "fine")
    r = fut.result(10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "fine"


def test_a_delta_with_null_fields_mid_stream_is_dropped(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w = fakes()
    s = Stream(pool, gw, chat("ext", "nulls", stream=True))
    gen = w.expect(Generate)
    w.send(Delta(gen.id, "Hel", 1))
    s.next()
    assert delta_text(s.next()) == "Hel"
    w.send_raw([b"delta", orjson.dumps({"id": gen.id, "text": None, "tokens": None})])
    w.send(Delta(gen.id, "lo", 2))
    w.send(Done(gen.id, "stop", USAGE))
    rest = s.rest()  # today: httpx.RemoteProtocolError, the body is cut off
    assert "".join(delta_text(ev) or "" for ev in rest) == "lo"
    assert rest[-1] == "[DONE]"


def test_a_worker_cannot_answer_a_request_it_does_not_hold(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w1, w2 = fakes(), fakes()
    fut = pool.submit(post, gw, chat("ext", "whose?"))
    holder, gen = first_generate([w1, w2])
    other = w2 if holder is w1 else w1
    answer(other, gen, "not mine")  # a stray worker claims the request
    time.sleep(0.3)
    answer(holder, gen, "mine")
    r = fut.result(10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "mine"
    wait_until(
        lambda: {x["id"]: x["inflight"] for x in ready_body(gw)["models"]["ext"]["workers"]}[holder.worker_id] == 0,
        timeout=2,
        what="the holder's batch slot to be free again",
    )


# -- 4. protocol version ----------------------------------------------------------------------


def test_a_worker_with_another_protocol_is_refused(gw: Gateway, fakes: Callable[..., FakeWorker]) -> None:
    w = fakes(ready=False)
    w.silent = True  # no heartbeat noise from a worker the gateway doesn't know
    w.hello(protocol=999)
    w.state("ready")
    w.expect(Drain, 5)
    time.sleep(0.3)
    body = ready_body(gw)
    assert all(w.worker_id not in {x["id"] for x in m["workers"]} for m in body["models"].values()), body
    log = gw.log_path.read_text(errors="replace")
    lines = [line for line in log.splitlines() if w.worker_id in line and "refus" in line]
    assert lines, log[-3000:]
    assert "protocol" in lines[0] and "999" in lines[0]


def test_a_worker_that_has_not_said_hello_is_ignored_until_it_does(
    gw: Gateway, fakes: Callable[..., FakeWorker]
) -> None:
    """E.g. a worker on its own whose heartbeats were queued while the gateway restarted: it says
    hello again when its connection is back, so it is not told to drain meanwhile."""
    w = fakes(ready=False)
    w.silent = True
    w.heartbeat()
    assert not [m for m in w.pending(0.5) if isinstance(m, Drain)]
    w.hello()
    w.state("ready")
    wait_until(lambda: worker_states(gw, "ext").get(w.worker_id) == "ready", what=f"{w.worker_id} ready")


def test_a_worker_given_up_on_that_comes_back_is_asked_to_drain(gw: Gateway, fakes: Callable[..., FakeWorker]) -> None:
    """Silent past heartbeat_timeout: the gateway forgets it. If it was only stuck and speaks
    again, it is told to drain (its own supervisor starts it afresh, with a hello)."""
    w = fakes()
    w.silent = True
    wait_until(lambda: w.worker_id not in worker_states(gw, "ext"), timeout=HEARTBEAT_TIMEOUT + 5, what="forgotten")
    w.heartbeat()
    w.expect(Drain, 5)
    w.heartbeat()
    assert not [m for m in w.pending(0.3) if isinstance(m, Drain)]  # asked once, then ignored


def test_a_worker_that_says_hello_again_has_its_requests_settled(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    """A hello from a connected worker means its connection broke and came back (output may have
    been lost): a request with output ends in worker_died, one without is sent again."""
    w = fakes()
    started = pool.submit(post, gw, chat("ext", "one"))
    gen = w.expect(Generate)
    w.send(Delta(gen.id, "par", 1))  # one connection keeps the order: it arrives before the hello
    w.hello()
    w.state("ready")
    r = started.result(10)
    assert r.status_code == 502 and r.json()["error"]["code"] == "worker_died", r.text

    unstarted = pool.submit(post, gw, chat("ext", "two"))
    gen = w.expect(Generate)
    w.hello()
    w.state("ready")
    again = w.expect(Generate)
    assert again.id == gen.id
    answer(w, again, "whole")
    r = unstarted.result(10)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "whole", r.text


# -- 5. the queue bound -----------------------------------------------------------------------


def test_queue_bound_gives_429_then_the_waiting_request_runs(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w = fakes()
    fa = pool.submit(post, gw, chat("ext", "A"))
    ga = w.expect(Generate)
    assert content(ga) == "A"
    fb = pool.submit(post, gw, chat("ext", "B"))
    wait_until(lambda: ready_body(gw)["models"]["ext"]["waiting"] == 1, timeout=1.5, what="B queued")
    assert w.pending(0.1) == [], "B must wait while A holds the only batch slot"

    rc = post(gw, chat("ext", "C"))
    assert rc.status_code == 429, rc.text
    assert int(rc.headers["retry-after"]) >= 1
    assert rc.json()["error"]["code"] == "queue_full"
    assert rc.json()["error"]["type"] == "rate_limit_error"

    answer(w, ga, "answer A")
    ra = fa.result(10)
    assert ra.status_code == 200 and ra.json()["choices"][0]["message"]["content"] == "answer A"
    gb = w.expect(Generate, REQUEST_WAIT)
    assert content(gb) == "B"
    answer(w, gb, "answer B")
    rb = fb.result(10)
    assert rb.status_code == 200 and rb.json()["choices"][0]["message"]["content"] == "answer B"
    assert [m for m in w.pending(0.3) if isinstance(m, Generate)] == [], "C was refused: it must never run"


# -- 6. request_wait --------------------------------------------------------------------------


def test_a_model_without_workers_answers_503_after_request_wait(gw: Gateway) -> None:
    t0 = time.monotonic()
    r = post(gw, chat("lonely"))
    elapsed = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert 1.5 <= elapsed <= 10, elapsed
    err = r.json()["error"]
    assert err["type"] == "server_error"
    assert "lonely" in err["message"]


# -- 7. client disconnect ---------------------------------------------------------------------


def test_a_client_that_goes_away_cancels_its_generation(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w = fakes()
    s = Stream(pool, gw, chat("ext", "bye", stream=True), close_after=lambda ev: delta_text(ev) == "Hel")
    gen = w.expect(Generate)
    w.send(Delta(gen.id, "Hel", 1))
    s.rest(5)  # the client read "Hel" and hung up
    cancel = w.expect(Cancel, 5)
    assert cancel.id == gen.id
    # the slot is free again (max_batch 1): the next request reaches the worker
    fut = pool.submit(post, gw, chat("ext", "next"))
    nxt = w.expect(Generate, REQUEST_WAIT)
    assert content(nxt) == "next"
    answer(w, nxt, "ok")
    assert fut.result(10).status_code == 200


# -- 8. worker errors -------------------------------------------------------------------------


def test_context_length_error_is_a_400(gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor) -> None:
    w = fakes()
    fut = pool.submit(post, gw, chat("ext", "long"))
    gen = w.expect(Generate)
    w.send(Error(gen.id, "context_length_exceeded", "the prompt has 9000 tokens; the model takes 2048"))
    r = fut.result(10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["type"] == "invalid_request_error"
    assert "9000" in err["message"]

    # streaming, before any output: still a plain JSON error
    s = Stream(pool, gw, chat("ext", "long", stream=True))
    gen = w.expect(Generate)
    w.send(Error(gen.id, "context_length_exceeded", "too long"))
    err = s.json()["error"]
    assert s.status == 400 and err["code"] == "context_length_exceeded"


def test_generation_failure_is_a_5xx_json_error(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w = fakes()
    fut = pool.submit(post, gw, chat("ext", "boom"))
    gen = w.expect(Generate)
    w.send(Error(gen.id, "generation_failed", "the step raised"))
    r = fut.result(10)
    assert 500 <= r.status_code < 600, r.text
    body = r.json()
    assert "choices" not in body
    assert body["error"]["code"] == "generation_failed" and body["error"]["type"] == "server_error"


def test_an_error_mid_stream_ends_it_with_an_error_event(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w = fakes()
    s = Stream(pool, gw, chat("ext", "midway", stream=True))
    gen = w.expect(Generate)
    w.send(Delta(gen.id, "Hel", 1))
    s.next()  # role chunk
    assert delta_text(s.next()) == "Hel"
    w.send(Error(gen.id, "generation_failed", "the step raised midway"))
    rest = s.rest()
    assert s.status == 200
    assert "[DONE]" not in rest, rest
    assert rest and isinstance(rest[-1], dict) and rest[-1]["error"]["code"] == "generation_failed", rest
    assert not any(isinstance(ev, dict) and ev.get("choices") and ev["choices"][0]["finish_reason"] for ev in rest)


# -- 9. a worker that goes silent mid-stream --------------------------------------------------


def test_a_silent_worker_is_removed_and_its_stream_ends_with_an_error(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w = fakes()
    s = Stream(pool, gw, chat("ext", "hang", stream=True))
    gen = w.expect(Generate)
    w.send(Delta(gen.id, "Hel", 1))
    s.next()
    assert delta_text(s.next()) == "Hel"
    w.silent = True
    t0 = time.monotonic()
    rest = s.rest(HEARTBEAT_TIMEOUT + 8)
    elapsed = time.monotonic() - t0
    assert elapsed >= HEARTBEAT_TIMEOUT - 1, f"declared dead after {elapsed:.1f}s of silence"
    assert "[DONE]" not in rest, rest
    assert rest and isinstance(rest[-1], dict) and "error" in rest[-1], rest
    err = rest[-1]["error"]
    assert "worker" in err["message"].lower() and err["code"] == "worker_died", err
    assert w.worker_id not in worker_states(gw, "ext")


# -- 10. re-dispatch --------------------------------------------------------------------------


def test_a_request_without_output_is_redispatched_once(
    gw: Gateway, fakes: Callable[..., FakeWorker], pool: ThreadPoolExecutor
) -> None:
    w1, w2 = fakes(), fakes()
    fut = pool.submit(post, gw, chat("ext", "again", max_tokens=8))
    holder, gen = first_generate([w1, w2])
    other = w2 if holder is w1 else w1
    holder.silent = True  # hangs before any output
    again = other.expect(Generate, HEARTBEAT_TIMEOUT + 5)
    assert (again.id, again.input, again.params) == (gen.id, gen.input, gen.params)
    answer(other, again, "res", "cued")
    r = fut.result(10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "rescued"
    assert r.json()["id"] == f"chatcmpl-{gen.id}"
    assert holder.worker_id not in worker_states(gw, "ext")
    assert f"re-dispatching request {gen.id}" in gw.log_path.read_text(errors="replace")
