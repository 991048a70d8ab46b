"""The access log line of a request, and /metrics moving with traffic (open without the key)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import Gateway, chat, serving

KEY_ENV = "HEARTH_TEST_OBS_KEY"
KEY = "obs-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("observability")
    with serving(
        tmp, [{"name": "tiny", "path": str(tiny_model)}], server={"api_key_env": KEY_ENV}, env={KEY_ENV: KEY}
    ) as g:
        yield g


def samples(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(gw.url + "/metrics")  # no key
    assert r.status_code == 200, r.text
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(snap: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


def access_lines(gw: Gateway, request_id: str) -> list[dict[str, str]]:
    out = []
    for line in gw.log_path.read_text(errors="replace").splitlines():
        if "hearth.access" in line and f"request_id={request_id}" in line:
            out.append(dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line.split("hearth.access INFO ", 1)[1])))
    return out


def wait_line(gw: Gateway, request_id: str) -> dict[str, str]:
    deadline = time.monotonic() + 10
    while not (lines := access_lines(gw, request_id)):
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)
    assert len(lines) == 1, lines
    return lines[0]


def test_a_request_makes_one_access_line_with_its_model_tokens_and_worker(gw: Gateway) -> None:
    r = gw.http.post("/v1/chat/completions", json=chat("tiny", max_tokens=6), headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    line = wait_line(gw, body["id"].removeprefix("chatcmpl-"))
    assert line["method"] == "POST" and line["path"] == "/v1/chat/completions" and line["status"] == "200"
    assert line["model"] == "tiny"
    assert line["worker"] == gw.workers("tiny")[0]["id"]
    assert int(line["prompt_tokens"]) == body["usage"]["prompt_tokens"]
    assert int(line["completion_tokens"]) == body["usage"]["completion_tokens"] == 6
    assert int(line["cached_tokens"]) == body["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert line["finish_reason"] == body["choices"][0]["finish_reason"] == "length"
    assert 0 < float(line["ttft"]) <= float(line["duration"])


def test_a_streamed_request_is_logged_when_it_ends(gw: Gateway) -> None:
    body = chat("tiny", max_tokens=4, stream=True, stream_options={"include_usage": True})
    with gw.http.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    rid = re.search(r'"id":"chatcmpl-(\w+)"', lines[0])
    assert rid is not None
    line = wait_line(gw, rid.group(1))
    assert line["completion_tokens"] == "4" and line["finish_reason"] == "length" and line["status"] == "200"


def test_a_refused_request_is_logged_with_its_status(gw: Gateway) -> None:
    before = gw.log_path.read_text(errors="replace").count("status=401")
    assert gw.http.post("/v1/chat/completions", json=chat("tiny")).status_code == 401
    deadline = time.monotonic() + 5
    while gw.log_path.read_text(errors="replace").count("status=401") == before:
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)


def test_metrics_parse_and_move_with_traffic(gw: Gateway) -> None:
    before = samples(gw)
    assert value(before, "hearth_model_load_seconds_count", model="tiny") >= 1  # the worker's load
    assert value(before, "hearth_workers", model="tiny", state="ready") == 1
    n, max_tokens = 2, 3
    for _ in range(n):
        r = gw.http.post("/v1/chat/completions", json=chat("tiny", max_tokens=max_tokens), headers=AUTH)
        assert r.status_code == 200, r.text
    prompt = r.json()["usage"]["prompt_tokens"]
    after = samples(gw)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("hearth_requests_total", model="tiny", endpoint="/v1/chat/completions", status="200") == n
    assert moved("hearth_completion_tokens_total", model="tiny") == n * max_tokens
    assert moved("hearth_prompt_tokens_total", model="tiny") == n * prompt
    assert moved("hearth_time_to_first_token_seconds_count", model="tiny") == n
    assert moved("hearth_inter_token_latency_seconds_count", model="tiny") == n * (max_tokens - 1)
    assert value(after, "hearth_shutting_down") == 0
    assert value(after, "hearth_http_requests_in_flight") == 0
