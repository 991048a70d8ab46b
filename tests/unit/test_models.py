"""The lifecycle owner (gateway/models.py) in-process: its state transitions as the supervisor
drives them and workers report, name resolution, ``wait_until`` and admission."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.errors import ModelNotFound, QueueFull, Unavailable
from gateway.models import Model, ModelState, Models, Phase
from shared.config import ModelConfig, ServerConfig, make_config
from shared.protocol import WorkerState


def models(**server: Any) -> Models:
    cfgs = [
        ModelConfig(name="a", path="/a", aliases=["claude-*"], max_queue=2, max_batch=1),
        ModelConfig(name="ext", path="/e", replicas=0, preload=False),
        ModelConfig(name="lazy", path="/l", preload=False),
    ]
    return Models(make_config(ServerConfig(**server), cfgs))


def join(ms: Models, model: str, worker_id: str, state: WorkerState) -> None:
    w = ms.pool.workers.get(worker_id) or ms.pool.add(worker_id, model)
    w.connected = True
    w.state = state
    ms.changed()


def test_a_model_goes_through_its_states_as_the_supervisor_and_its_workers_say() -> None:
    ms = models()
    a = ms["a"]
    assert a.state is ModelState.UNLOADED and not a.resident and a.required
    a.started()
    ms.pool.add("a-r0-g0", "a")  # spawned, not connected yet
    ms.changed()
    assert a.state is ModelState.STARTING and a.resident
    join(ms, "a", "a-r0-g0", WorkerState.LOADING)
    assert a.state is ModelState.LOADING and a.ready_since is None
    join(ms, "a", "a-r0-g0", WorkerState.READY)
    assert a.state is ModelState.READY and a.ready_since is not None and ms.is_ready()
    join(ms, "a", "a-r0-g0", WorkerState.DRAINING)
    assert a.state is ModelState.DRAINING
    a.unloading()
    ms.changed()
    assert a.state is ModelState.UNLOADING and not a.required and not a.accepting
    ms.pool.remove("a-r0-g0")
    a.exited()
    ms.changed()
    assert a.state is ModelState.UNLOADED and a.phase is Phase.IDLE and a.ready_since is None
    assert ms.is_ready()  # unloaded on purpose: /ready no longer waits for it


def test_a_failed_model_says_why_until_a_fresh_start() -> None:
    ms = models()
    a = ms["a"]
    a.started()
    a.failed("5 worker exits within 60s")
    a.exited()
    ms.changed()
    assert a.state is ModelState.FAILED and ms.describe(a)["detail"] == "5 worker exits within 60s"
    assert not ms.is_ready()
    a.fresh_start()
    ms.changed()
    assert a.reason is None and a.state is ModelState.UNLOADED


def test_a_worker_started_on_its_own_makes_its_model_ready() -> None:
    ms = models()
    ext = ms["ext"]
    assert ext.state is ModelState.STARTING  # replicas = 0: waits for a worker to join
    join(ms, "ext", "w1", WorkerState.READY)
    assert ext.state is ModelState.READY


def test_names_and_aliases_resolve_in_one_place() -> None:
    ms = models()
    assert ms.resolve("a").name == "a" and ms.resolve("claude-sonnet-4").name == "a"
    with pytest.raises(ModelNotFound) as e:
        ms.resolve("nope", param="name")
    assert e.value.param == "name" and "nope" in e.value.message


def test_wait_until_returns_once_the_condition_holds_and_counts_its_demand() -> None:
    async def run() -> None:
        ms = models()
        lazy = ms["lazy"]
        got: list[int] = []

        async def later() -> None:
            await asyncio.sleep(0.05)
            assert lazy.demand == 1  # the supervisor's demand loop would load it now
            got.append(7)
            ms.changed()

        task = asyncio.create_task(later())
        value = await ms.wait_until(lazy, lambda: got[0] if got else None, time.monotonic() + 2, "never")
        await task
        assert value == 7 and lazy.demand == 0

    asyncio.run(run())


def test_wait_until_fails_fast_for_a_failed_model_and_says_why_it_timed_out() -> None:
    async def run() -> None:
        ms = models()
        a = ms["a"]
        a.failed("bad weights")
        with pytest.raises(Unavailable) as e:
            await ms.wait_until(a, lambda: None, time.monotonic() + 5, "x")
        assert e.value.code == "model_failed" and "bad weights" in e.value.message
        lazy = ms["lazy"]
        lazy.blocked = "max_loaded_models = 1 is reached"
        with pytest.raises(Unavailable) as e:
            await ms.wait_until(lazy, lambda: None, time.monotonic() + 0.05, "x")
        assert "could not be loaded in time: max_loaded_models = 1" in e.value.message
        lazy.never = "needs more than the whole memory_budget"
        with pytest.raises(Unavailable) as e:
            await ms.wait_until(lazy, lambda: None, time.monotonic() + 5, "x")
        assert e.value.code == "memory_budget_exceeded"

    asyncio.run(run())


def test_admission_is_first_come_first_served_and_bounded() -> None:
    async def run() -> None:
        ms = models(request_wait=5.0)
        a = ms["a"]
        a.started()
        join(ms, "a", "w", WorkerState.READY)
        worker = await ms.admit(a, time.monotonic())
        worker.inflight.add("r0")  # max_batch = 1: the worker is full now
        order: list[str] = []

        async def wait(name: str, front: bool = False) -> None:
            w = await ms.admit(a, time.monotonic(), front=front)
            order.append(name)
            w.inflight.add(name)

        first = asyncio.create_task(wait("first"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(wait("second"))
        await asyncio.sleep(0.01)
        assert len(a.queue) == 2 and ms.describe(a)["waiting"] == 2
        with pytest.raises(QueueFull):  # max_queue = 2
            await ms.admit(a, time.monotonic())
        again = asyncio.create_task(wait("redispatched", front=True))  # never refused, goes first
        await asyncio.sleep(0.01)
        for done in ("r0", "redispatched", "first"):
            worker.inflight.discard(done)
            ms.changed()
            await asyncio.sleep(0.02)
        await asyncio.gather(first, second, again)
        assert order == ["redispatched", "first", "second"] and not a.queue

    asyncio.run(run())


def test_an_unloading_model_takes_no_request_and_a_timed_out_wait_says_its_state() -> None:
    async def run() -> None:
        ms = models(request_wait=0.1)
        a = ms["a"]
        a.started()
        join(ms, "a", "w", WorkerState.READY)
        a.unloading()
        ms.changed()
        assert ms.pick(a) is None
        with pytest.raises(Unavailable) as e:
            await ms.admit(a, time.monotonic())
        assert "became ready in time; state: unloading" in e.value.message and not a.queue

    asyncio.run(run())


def test_idle_means_nothing_runs_waits_or_asks() -> None:
    ms = models()
    a: Model = ms["a"]
    join(ms, "a", "w", WorkerState.READY)
    assert ms.is_idle(a)
    ms.pool.workers["w"].inflight.add("r")
    assert not ms.is_idle(a) and ms.running(a) == 1
    ms.pool.workers["w"].inflight.clear()
    a.demand = 1
    assert not ms.is_idle(a)
