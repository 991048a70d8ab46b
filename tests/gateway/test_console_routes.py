"""Where the console is served when Ollama's API claims "/", and what its stream says about a
model whose worker runs on its own: the real gateway process, with a fake worker (no MLX)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from tests.gateway.fakes import FakeWorker
from tests.gateway.gateways import fake_gateway
from tests.servers import Gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, endpoint: str) -> Iterator[Gateway]:
    with fake_gateway(tmp_path_factory, "console-ollama", endpoint, [{"name": "ext"}], ollama=True) as g:
        yield g


def test_with_ollama_the_console_moves_to_console(gw: Gateway) -> None:
    assert gw.http.get("/").text == "Ollama is running"
    page = gw.http.get("/console")
    assert page.status_code == 200 and "<title>Hearth console</title>" in page.text
    assert "data-key-required" not in page.text  # no API key on this server
    assert page.headers["x-frame-options"] == "DENY"
    css = gw.http.get("/console/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert gw.http.get("/console/nothing.js").status_code == 404
    assert gw.http.post("/console/events").status_code == 405
    # no API key here: a no-cors GET from a page on another port (no Origin) meets the console's own check
    refused = gw.http.get("/console/events", headers={"Sec-Fetch-Site": "same-site"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_not_allowed"
    assert "refused GET /console/events" in gw.log()


def test_the_stream_describes_a_worker_started_on_its_own(gw: Gateway, fakes: Callable[..., FakeWorker]) -> None:
    fakes("ext")
    with gw.http.stream("GET", "/console/events", headers={"Sec-Fetch-Site": "same-origin"}) as r:
        assert r.status_code == 200
        data = next(line for line in r.iter_lines() if line.startswith("data: "))
    body = json.loads(data[6:])
    (ext,) = body["models"]
    assert (ext["name"], ext["state"], ext["replicas"], ext["kind"]) == ("ext", "ready", 0, "chat")
    assert len(ext["workers"]) == 1 and ext["restarts"] == 0
    assert set(body["live"]) >= {"series", "ttft_p50", "ttft_p99", "cache_hit_rate", "restarts", "tokens_per_s"}
