"""Fixtures of the fake-worker tests. Each module starts its own gateway as ``gw`` (with
``gateways.fake_gateway`` and its own settings) on the module's ``endpoint``; fake workers join
it there."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.gateway.fakes import FakeWorker
from tests.gateway.gateways import ready_fake
from tests.servers import Gateway, free_port


@pytest.fixture(scope="module")
def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    """Threads for the HTTP calls, which block until the test, playing the worker, answers."""
    ex = ThreadPoolExecutor(max_workers=8, thread_name_prefix="http")
    try:
        yield ex
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def fakes(gw: Gateway, endpoint: str) -> Iterator[Callable[..., FakeWorker]]:
    """Make fake workers (by default: hello + ready, and seen ready by the gateway); all closed after."""
    made: list[FakeWorker] = []

    def make(model: str = "ext", ready: bool = True) -> FakeWorker:
        w = ready_fake(gw, endpoint, model) if ready else FakeWorker(endpoint, model)
        made.append(w)
        return w

    try:
        yield make
    finally:
        for w in made:
            w.close()  # draining: the gateway sends it nothing more


@pytest.fixture
def worker(fakes: Callable[..., FakeWorker]) -> FakeWorker:
    """One fake worker for "ext", ready."""
    return fakes()
