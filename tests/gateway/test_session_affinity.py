"""A choice's own affinity key (the Responses API's ``prompt_cache_key``) routes it to the replica
that served that key before, as the key the router derives from a conversation's head does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.session import Choice
from shared.protocol import Done, Generate
from tests.gateway.fakes import FakeWorker
from tests.gateway.test_session import USAGE, engine, ready_worker, request

pytestmark = pytest.mark.timeout(60)


def test_the_same_key_goes_to_the_same_replica_whatever_the_input(tmp_path: Path) -> None:
    async def run() -> None:
        async with engine(tmp_path) as (gens, endpoint):
            w1, w2 = await ready_worker(gens, endpoint), await ready_worker(gens, endpoint)
            req = request()
            cfg = gens.model(req, "m")

            def choice(text: str, key: str | None) -> list[Choice]:
                return [Choice(0, 0, {"messages": [{"role": "user", "content": text}]}, {}, affinity=key)]

            async def placed(text: str, key: str | None) -> tuple[FakeWorker, Generate, asyncio.Task[object]]:
                """Start a request; the fake worker it was dispatched to, and what it got."""
                task = asyncio.create_task(gens.collect(req, cfg, choice(text, key)))
                for _ in range(100):
                    for w in (w1, w2):
                        got = [m for m in await asyncio.to_thread(w.pending, 0.02) if isinstance(m, Generate)]
                        if got:
                            return w, got[0], task
                raise AssertionError("the request was not dispatched")

            first, g1, t1 = await placed("one conversation", "session-1")
            # the key's replica holds one request and the other none, yet the key wins (slack 1)
            second, g2, t2 = await placed("another conversation entirely", "session-1")
            assert second is first
            # without a key, the least loaded replica takes it
            third, g3, t3 = await placed("a third conversation", None)
            assert third is not first
            for w, g in ((first, g1), (second, g2), (third, g3)):
                w.send(Done(g.id, "stop", USAGE))
            await asyncio.gather(t1, t2, t3)
            w1.close()
            w2.close()

    asyncio.run(run())
