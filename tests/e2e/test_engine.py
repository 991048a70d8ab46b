"""The engine end to end: batch isolation under load, system prompts shared across
conversations, and warm restarts (a new gateway's first request reuses the saved KV cache)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_replicas import no_eos
from tests.servers import Gateway, serving

SYSTEM = "You are Hearth's test assistant. Always be precise about Paris, Köln and Tokyo. " * 10


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hearth-cache")


def models(tiny_model: Path) -> list[dict[str, Any]]:
    return [
        # no prompt cache: what a request produces must depend on nothing but itself
        {"name": "iso", "path": str(tiny_model), "max_batch": 16, "prompt_cache_bytes": 0},
        # the GPU backends' admission rule on this CPU: arrivals held, rendered aside (worker/prep.py)
        {"name": "held", "path": str(tiny_model), "max_batch": 16, "prompt_cache_bytes": 0, "admission_hold": 3},
        {"name": "warm", "path": str(tiny_model)},
    ]


@pytest.fixture(scope="module")
def gw(tiny_model: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("engine")
    with serving(tmp, models(tiny_model), env={"HEARTH_CACHE_DIR": str(cache_dir)}) as g:
        yield g


def complete(gw: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    r = gw.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def sys_chat(model: str, user: str) -> dict[str, Any]:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return {"model": model, "messages": msgs, "temperature": 0, "max_tokens": 8}


@pytest.mark.parametrize("model", ["iso", "held"])
def test_sixteen_concurrent_seeded_requests_each_produce_what_they_produce_alone(
    gw: Gateway, tiny_model: Path, model: str
) -> None:
    ban_eos = no_eos(tiny_model)  # every request runs all its tokens, so they overlap in the batch
    bodies = [
        {
            "model": model,
            "messages": [{"role": "user", "content": f"Request {i}: " + "Grüße aus Köln. " * (1 + i % 5)}],
            "temperature": 1.0,  # the random model's greedy text is the same for every prompt
            "seed": 1000 + i,
            "max_tokens": 24,
            "logit_bias": ban_eos,
        }
        for i in range(16)
    ]
    alone = [complete(gw, b)["choices"][0]["message"]["content"] for b in bodies]
    assert len(set(alone)) > 1, "different prompts should give different texts"
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda b: complete(gw, b), bodies))
    assert [r["choices"][0]["message"]["content"] for r in together] == alone
    assert all(r["usage"]["completion_tokens"] == 24 for r in together)


def test_conversations_sharing_a_system_prompt_reuse_it(gw: Gateway) -> None:
    first = complete(gw, sys_chat("warm", "Where is Paris?"))
    cold = first["usage"]["prompt_tokens_details"]["cached_tokens"]
    second = complete(gw, sys_chat("warm", "Tell me something about Tokyo, please."))
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > cold and cached > 200, (first["usage"], second["usage"])
    assert cached < second["usage"]["prompt_tokens"]


def test_a_restarted_gateway_starts_warm(
    gw: Gateway, tiny_model: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("restart")
    env = {"HEARTH_CACHE_DIR": str(cache_dir / "restart")}
    body = sys_chat("warm", "Where is Köln?")
    with serving(tmp, models(tiny_model), env=env) as first:
        before = complete(first, body)
    assert before["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    saved = list((cache_dir / "restart" / "prompt-cache").glob("*/*.safetensors"))
    assert saved, "the drained worker should have saved its prompt cache"
    with serving(tmp, models(tiny_model), env=env) as second:
        after = complete(second, sys_chat("warm", "And where is Paris?"))
        again = complete(second, body)
    assert after["usage"]["prompt_tokens_details"]["cached_tokens"] > 200
    assert again["choices"][0]["message"]["content"] == before["choices"][0]["message"]["content"]
