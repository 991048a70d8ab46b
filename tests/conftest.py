"""Session-wide fixtures: the tiny random-weight model is built once per session; gateways are
started per test module (see tests/servers.py) and always stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Gateway
from tests.tinymodel import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def tiny_gateway(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway serving the tiny model as "tiny", shared by the tests of a module."""
    gw = Gateway(["--model", str(tiny_model), "--name", "tiny"], tmp_path_factory.mktemp("gw") / "gateway.log")
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()
