"""OpenAI's /v1/embeddings on the real all-MiniLM-L6-v2 worker (and a tiny chat model beside
it): the official SDK (base64 by default), input shapes, limits, the kind checks both ways, bad
bodies, and the same supervision and residency as chat models."""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tests.servers import Gateway, serving

URL = "/v1/embeddings"
CLOSE = ["The cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."]


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [
        {"name": "minilm", "kind": "embedding", "aliases": ["text-embedding-*"]},
        {"name": "lazy-minilm", "kind": "embedding", "preload": False, "keep_alive": "1h"},
        {"name": "tiny", "path": str(tiny_model)},
    ]
    with serving(tmp_path_factory.mktemp("gw-embed"), models) as g:
        yield g


def vectors(gw: Gateway, **body: Any) -> list[list[float]]:
    r = gw.http.post(URL, json={"model": "minilm", **body})
    assert r.status_code == 200, r.text
    return [d["embedding"] for d in r.json()["data"]]


def test_openai_sdk_embeddings_create_base64_by_default(gw: Gateway) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none")
    got = client.embeddings.create(model="minilm", input=CLOSE)  # the SDK asks for base64 and decodes it
    assert [d.index for d in got.data] == [0, 1, 2]
    floats = vectors(gw, input=CLOSE)
    for d, ref in zip(got.data, floats):
        assert len(d.embedding) == 384
        assert np.allclose(d.embedding, np.asarray(ref, dtype=np.float32), atol=0)
    assert got.usage.prompt_tokens == got.usage.total_tokens > 3 * 3
    alias = client.embeddings.create(model="text-embedding-3-small", input="The cat sits on the mat.")
    assert np.allclose(alias.data[0].embedding, floats[0], atol=1e-6)


def test_base64_is_little_endian_float32(gw: Gateway) -> None:
    r = gw.http.post(URL, json={"model": "minilm", "input": "hello", "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    packed = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(packed, vectors(gw, input="hello")[0], atol=0)


def test_vectors_are_unit_length_and_meaningful(gw: Gateway) -> None:
    v = np.array(vectors(gw, input=CLOSE))
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_token_id_inputs(gw: Gateway) -> None:
    ids = [101, 1996, 4937, 7719, 2006, 1996, 13523, 1012, 102]  # "The cat sits on the mat." with [CLS]/[SEP]
    one = vectors(gw, input=ids)
    many = vectors(gw, input=[ids, ids[:4] + [102]])
    assert len(one) == 1 and len(many) == 2
    assert np.allclose(one[0], vectors(gw, input=CLOSE[0])[0], atol=1e-5)
    r = gw.http.post(URL, json={"model": "minilm", "input": ids})
    assert r.json()["usage"]["prompt_tokens"] == len(ids)


def test_dimensions_the_model_has_is_fine_others_are_a_400(gw: Gateway) -> None:
    assert len(vectors(gw, input="x", dimensions=384)[0]) == 384
    r = gw.http.post(URL, json={"model": "minilm", "input": "x", "dimensions": 64})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    assert "384" in r.json()["error"]["message"]


def test_an_input_over_the_limit_is_a_400_naming_the_limit(gw: Gateway) -> None:
    r = gw.http.post(URL, json={"model": "minilm", "input": ["short", "word " * 300]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "input" and "at most 256 tokens" in err["message"] and "input 1" in err["message"]


def test_kinds_do_not_mix(gw: Gateway) -> None:
    r = gw.http.post(URL, json={"model": "tiny", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert "chat model" in r.json()["error"]["message"]
    for path, body in [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/messages", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}),
    ]:
        r = gw.http.post(path, json={"model": "minilm", **body})
        assert r.status_code == 400, (path, r.text)
        assert "embedding model" in r.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": ["a", 1]}, "input"),
        ({"input": 5}, "input"),
        ({"input": [-1]}, "input"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": "384"}, "dimensions"),
        ({"input": "x", "keep_alive": "soon"}, "keep_alive"),
        ({"input": [[1, 2], "x"]}, "input"),
    ],
)
def test_bad_bodies_are_400s_naming_the_parameter(gw: Gateway, body: dict[str, Any], param: str) -> None:
    r = gw.http.post(URL, json={"model": "minilm", **body})
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"] or "").startswith(param), r.json()


def test_token_ids_outside_the_vocabulary_are_a_400(gw: Gateway) -> None:
    r = gw.http.post(URL, json={"model": "minilm", "input": [101, 999999, 102]})
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]


def test_unknown_model_is_a_404(gw: Gateway) -> None:
    r = gw.http.post(URL, json={"model": "nope", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_an_on_demand_embedding_model_loads_on_first_use(gw: Gateway) -> None:
    before = {m["id"]: m["state"] for m in gw.http.get("/v1/models").json()["data"]}
    assert before["lazy-minilm"] == "unloaded"
    r = gw.http.post(URL, json={"model": "lazy-minilm", "input": "x"})
    assert r.status_code == 200, r.text
    assert np.allclose(r.json()["data"][0]["embedding"], vectors(gw, input="x")[0], atol=1e-6)
    after = {m["name"]: m for m in gw.http.get("/admin/models").json()["models"]}
    assert after["lazy-minilm"]["state"] == "ready"
    assert after["lazy-minilm"]["keep_alive_seconds"] == 3600


def test_metrics_count_embedding_requests_and_tokens(gw: Gateway) -> None:
    vectors(gw, input=CLOSE)
    text = gw.http.get("/metrics").text
    assert any(
        line.startswith("hearth_requests_total") and 'model="minilm"' in line and 'endpoint="/v1/embeddings"' in line
        for line in text.splitlines()
    ), text[:2000]
    tokens = [line for line in text.splitlines() if line.startswith('hearth_prompt_tokens_total{model="minilm"}')]
    assert tokens and float(tokens[0].split()[-1]) > 0


def test_a_killed_embedding_worker_is_restarted(gw: Gateway) -> None:
    (worker,) = gw.workers("minilm")
    os.kill(worker["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ws = gw.workers("minilm")
        if ws and ws[0]["pid"] != worker["pid"] and ws[0]["state"] == "ready":
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no new minilm worker: {gw.workers('minilm')}\n{gw.log()}")
    assert len(vectors(gw, input="after the crash")[0]) == 384


def test_ollama_routes_are_off_unless_configured(gw: Gateway) -> None:
    root = gw.http.get("/")  # "/" is the web console (issue 17) unless Ollama's API claims it
    assert root.status_code == 200 and "<title>Hearth console</title>" in root.text
    r = gw.http.get("/api/tags")
    assert r.status_code == 404 and set(r.json()) == {"error"}
