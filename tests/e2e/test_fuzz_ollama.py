"""Fuzzing Ollama's routes and the embedding endpoints with hypothesis: bodies mixing valid and
invalid values for every field (options included), random extra fields and raw bytes. Whatever
comes in, the answer is never a 5xx: Ollama's ``{"error"}`` (or OpenAI's error on
/v1/embeddings), or a well-formed answer (NDJSON lines ending in ``done`` or an ``error`` line
when streamed); and the gateway keeps serving afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.servers import Gateway, serving

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)
text = st.one_of(st.text(max_size=30), st.sampled_from(["<|im_end|>", "東京 🚀 Köln", ""]))
option_keys = st.sampled_from(
    [
        "num_predict",
        "num_ctx",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "repeat_last_n",
        "mirostat",
        "typical_p",
        "num_thread",
        "tfs_z",
        "penalize_newline",
        "bogus",
    ]
)
options = st.dictionaries(option_keys, json_values | st.integers(-3, 3) | st.floats(0, 2), max_size=4).map(
    lambda o: {**o, "num_predict": 2} if isinstance(o.get("num_predict"), int) and o["num_predict"] > 2 else o
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "robot"]), "content": text},
    optional={
        "images": st.lists(st.text(max_size=6), max_size=1),
        "tool_name": st.text(max_size=6),
        "thinking": text,
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {"function": st.fixed_dictionaries({"name": st.text(max_size=6), "arguments": json_values})}
            ),
            max_size=1,
        ),
    },
)
common = {
    "format": st.sampled_from(["", "json", None]) | json_values,
    "options": options | json_values,
    "stream": st.booleans() | json_values,
    "keep_alive": st.sampled_from(["5m", 0, -1, "forever", "soon", 1.5]) | json_values,
    "think": st.booleans() | st.sampled_from(["high", "max"]) | json_values,
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(-1, 25),
}
model = st.sampled_from(["tiny", "tiny:latest", "minilm", "nope"])
chat_bodies = st.fixed_dictionaries(
    {"model": model},
    optional={
        **common,
        "messages": st.lists(message, max_size=3) | json_values,
        "tools": json_values,
        "extra": json_values,
    },
)
generate_bodies = st.fixed_dictionaries(
    {"model": model},
    optional={
        **common,
        "prompt": text | json_values,
        "system": text,
        "raw": st.booleans(),
        "suffix": text,
        "images": json_values,
        "context": json_values,
        "template": text,
    },
)
embed_bodies = st.fixed_dictionaries(
    {"model": model},
    optional={
        "input": text | st.lists(text, max_size=3) | json_values,
        "truncate": st.booleans() | json_values,
        "dimensions": st.integers(-1, 400) | json_values,
        "options": options | json_values,
        "keep_alive": json_values,
    },
)
openai_embed_bodies = st.fixed_dictionaries(
    {"model": model},
    optional={
        "input": text | st.lists(text, max_size=3) | st.lists(st.integers(-5, 40000), max_size=5) | json_values,
        "encoding_format": st.sampled_from(["float", "base64", "int8"]) | json_values,
        "dimensions": st.integers(-1, 400) | json_values,
        "user": json_values,
    },
)


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [{"name": "tiny", "path": str(tiny_model), "max_tokens": 4}, {"name": "minilm", "kind": "embedding"}]
    with serving(tmp_path_factory.mktemp("gw-fuzz-ollama"), models, {"ollama": True}) as g:
        yield g


def check(gw: Gateway, path: str, body: Any) -> None:
    with gw.http.stream("POST", path, content=json.dumps(body)) as r:
        raw = r.read()
    assert r.status_code < 500, (path, body, r.status_code, raw[:300])
    if r.status_code >= 400:
        err = json.loads(raw)["error"]
        assert err if path.startswith("/api/") else err["message"]
        return
    if r.headers["content-type"].startswith("application/x-ndjson"):
        lines = [json.loads(line) for line in raw.splitlines() if line]
        assert lines and (lines[-1].get("done") is True or "error" in lines[-1]), lines[-3:]
    else:
        assert isinstance(json.loads(raw), dict)


@FUZZ
@given(body=chat_bodies)
def test_chat_never_fails_with_a_5xx(gw: Gateway, body: dict[str, Any]) -> None:
    check(gw, "/api/chat", body)


@FUZZ
@given(body=generate_bodies)
def test_generate_never_fails_with_a_5xx(gw: Gateway, body: dict[str, Any]) -> None:
    check(gw, "/api/generate", body)


@FUZZ
@given(body=embed_bodies, old=st.booleans())
def test_embed_never_fails_with_a_5xx(gw: Gateway, body: dict[str, Any], old: bool) -> None:
    if old:
        body = {**body, "prompt": body.pop("input", None)}
    check(gw, "/api/embeddings" if old else "/api/embed", body)


@FUZZ
@given(body=openai_embed_bodies)
def test_openai_embeddings_never_fail_with_a_5xx(gw: Gateway, body: dict[str, Any]) -> None:
    check(gw, "/v1/embeddings", body)


@FUZZ
@given(raw=st.binary(max_size=64), path=st.sampled_from(["/api/chat", "/api/generate", "/api/embed", "/api/show"]))
def test_raw_bytes_are_4xx(gw: Gateway, raw: bytes, path: str) -> None:
    r = gw.http.post(path, content=raw)
    assert 400 <= r.status_code < 500 and "error" in r.json(), (raw, r.status_code, r.text[:200])


def test_still_serving_after_the_fuzz(gw: Gateway) -> None:
    r = gw.http.post(
        "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    )
    assert r.status_code == 200 and r.json()["done"] is True
    assert gw.http.post("/api/embed", json={"model": "minilm", "input": "x"}).status_code == 200
