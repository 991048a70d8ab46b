"""The generation session (gateway/session.py) in-process: the real engine client and its real
sockets, fake workers playing the model, no HTTP server. What every API gets from it: merged
choices, keep-alive ticks, errors before and after the first event, re-dispatch of a request
whose worker was lost before any output, and cancelling when the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import StreamingResponse

from gateway.client import EngineClient
from gateway.errors import HearthError, InvalidRequest
from gateway.models import ModelState, Models
from gateway.record import Record
from gateway.session import Choice, ClientGone, Generations
from shared.config import ModelConfig, ServerConfig, make_config
from shared.protocol import ERROR_BAD_REQUEST, ERROR_GENERATION, Cancel, Delta, Done, Error, Generate
from tests.gateway.fakes import FakeWorker

pytestmark = pytest.mark.timeout(60)
USAGE = {"prompt_tokens": 3, "completion_tokens": 1, "cached_tokens": 0}


class Lines:
    """A StreamFormat that writes readable lines, so a test sees what happened in which order
    (the body joins what came together into one write: ``body`` splits them again)."""

    media_type = "text/plain"
    headers: dict[str, str] = {}

    def opening(self, rid: str) -> list[bytes]:
        return [b"open\n"]

    def event(self, choice: Choice, ev: Delta | Done) -> list[bytes]:
        if isinstance(ev, Delta):
            return [f"{choice.index}:{ev.text}\n".encode()]
        return [f"{choice.index}:done:{ev.finish_reason}\n".encode()]

    def closing(self) -> list[bytes]:
        return [b"close\n"]

    def keepalive(self) -> bytes:
        return b"tick\n"

    def failure(self, err: HearthError) -> bytes:
        return f"failed:{err.code}\n".encode()


def request(disconnected: list[bool] | None = None) -> Request:
    gone = disconnected if disconnected is not None else [False]

    async def receive() -> dict[str, Any]:
        if gone[0]:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/v1/x", "headers": [], "state": {}}, receive)


@contextlib.asynccontextmanager
async def engine(tmp_path: Path, **server: Any) -> AsyncIterator[tuple[Generations, str]]:
    cfg = make_config(ServerConfig(**server), [ModelConfig(name="m", path=str(tmp_path), replicas=0)])
    models = Models(cfg)
    endpoint = f"ipc://{tmp_path}/workers.sock"
    client = EngineClient(cfg, models, endpoint)
    await client.start()
    try:
        yield Generations(cfg, models, client), endpoint
    finally:
        await client.stop()


async def ready_worker(gens: Generations, endpoint: str) -> FakeWorker:
    w = FakeWorker(endpoint, "m")
    w.hello()
    w.state("ready")
    deadline = time.monotonic() + 5
    while not any(x.worker_id == w.worker_id and x.state.value == "ready" for x in gens.models.pool.workers.values()):
        assert time.monotonic() < deadline, "the fake worker never became ready"
        await asyncio.sleep(0.01)
    assert gens.models["m"].state is ModelState.READY
    return w


async def expect(w: FakeWorker, cls: type[Any]) -> Any:
    return await asyncio.to_thread(w.expect, cls)


async def body(resp: Any) -> list[str]:
    assert isinstance(resp, StreamingResponse)
    text = "".join([(c if isinstance(c, bytes) else str(c).encode()).decode() async for c in resp.body_iterator])
    return text.splitlines()


def choices(n: int = 1) -> list[Choice]:
    return [Choice(i, 0, {"prompt": "hi"}, {"max_tokens": 4}) for i in range(n)]


def test_collect_runs_every_choice_and_records_them(tmp_path: Path) -> None:
    async def run() -> None:
        async with engine(tmp_path) as (gens, endpoint):
            w = await ready_worker(gens, endpoint)
            req = request()
            cfg = gens.model(req, "m")
            task = asyncio.create_task(gens.collect(req, cfg, choices(2)))
            g1, g2 = await expect(w, Generate), await expect(w, Generate)
            w.send(Delta(g2.id, "b", 1))
            w.send(Delta(g1.id, "a", 1))
            w.send(Done(g2.id, "length", USAGE))
            w.send(Delta(g1.id, "a", 2))
            w.send(Done(g1.id, "stop", USAGE))
            r1, r2 = await task
            assert (r1.choice.index, r1.text, r1.done.finish_reason) == (0, "aa", "stop")
            assert (r2.choice.index, r2.text, r2.done.finish_reason) == (1, "b", "length")
            record = Record.of(req)
            assert record.model == "m" and [rs.id for _, rs in record.generations] == [g1.id, g2.id]
            w.close()

    asyncio.run(run())


def test_a_stream_ticks_until_the_first_event_and_during_long_gaps(tmp_path: Path) -> None:
    async def run() -> None:
        async with engine(tmp_path, sse_keepalive=0.05) as (gens, endpoint):
            w = await ready_worker(gens, endpoint)
            req = request()
            resp_task = asyncio.create_task(gens.stream(req, gens.model(req, "m"), choices(), Lines()))
            gen = await expect(w, Generate)
            resp = await resp_task  # the first token is slow: the response starts anyway
            lines_task = asyncio.create_task(body(resp))
            await asyncio.sleep(0.2)
            w.send(Delta(gen.id, "x", 1))
            await asyncio.sleep(0.2)
            w.send(Done(gen.id, "stop", USAGE))
            lines = await lines_task
            first = lines.index("0:x")
            assert lines[0] == "open" and "tick" in lines[1:first], lines
            assert "tick" in lines[first:], "a long gap after the first token is bridged too"
            assert lines[-2:] == ["0:done:stop", "close"]
            w.close()

    asyncio.run(run())


def test_an_error_at_once_is_raised_and_one_later_is_in_band(tmp_path: Path) -> None:
    async def run() -> None:
        async with engine(tmp_path, sse_keepalive=0.3) as (gens, endpoint):
            w = await ready_worker(gens, endpoint)
            req = request()
            task = asyncio.create_task(gens.stream(req, gens.model(req, "m"), choices(), Lines()))
            gen = await expect(w, Generate)
            w.send(Error(gen.id, ERROR_BAD_REQUEST, "no such thing", param="prompt"))
            with pytest.raises(InvalidRequest) as e:
                await task
            assert e.value.param == "prompt"

            task = asyncio.create_task(gens.stream(req, gens.model(req, "m"), choices(), Lines()))
            gen = await expect(w, Generate)
            resp = await task
            lines_task = asyncio.create_task(body(resp))
            await asyncio.sleep(0.1)
            w.send(Error(gen.id, ERROR_GENERATION, "fell over"))
            assert (await lines_task)[-1] == f"failed:{ERROR_GENERATION}"
            w.close()

    asyncio.run(run())


def test_a_request_whose_worker_is_lost_before_output_moves_to_another(tmp_path: Path) -> None:
    async def run() -> None:
        async with engine(tmp_path) as (gens, endpoint):
            w1 = await ready_worker(gens, endpoint)
            req = request()
            task = asyncio.create_task(gens.collect(req, gens.model(req, "m"), choices()))
            gen = await expect(w1, Generate)
            w2 = await ready_worker(gens, endpoint)
            gens.client.worker_exited(w1.worker_id, "exit code -9")
            again = await expect(w2, Generate)
            assert again.id == gen.id
            w2.send(Delta(gen.id, "ok", 1))
            w2.send(Done(gen.id, "stop", USAGE))
            (result,) = await task
            assert result.text == "ok"
            assert Record.of(req).generations[0][1].worker_id == w2.worker_id

            # with output already sent, a lost worker is an error, never a truncated success
            task = asyncio.create_task(gens.collect(req, gens.model(req, "m"), choices()))
            gen = await expect(w2, Generate)
            w2.send(Delta(gen.id, "partial", 1))
            await asyncio.sleep(0.1)
            gens.client.worker_exited(w2.worker_id, "exit code -9")
            with pytest.raises(HearthError) as e:
                await task
            assert e.value.code == "worker_died"
            w1.close()
            w2.close()

    asyncio.run(run())


def test_a_client_that_leaves_cancels_its_generation(tmp_path: Path) -> None:
    async def run() -> None:
        async with engine(tmp_path) as (gens, endpoint):
            w = await ready_worker(gens, endpoint)
            gone = [False]
            req = request(gone)
            task = asyncio.create_task(gens.collect(req, gens.model(req, "m"), choices()))
            gen = await expect(w, Generate)
            gone[0] = True
            with pytest.raises(ClientGone):
                await task
            cancel = await expect(w, Cancel)
            assert cancel.id == gen.id
            assert not gens.models.pool.workers[w.worker_id].inflight  # its batch slot is free
            w.close()

    asyncio.run(run())
