"""Every sampling parameter changes the output as it should, per request, inside batching."""

from __future__ import annotations

import concurrent.futures
import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import Gateway, chat, serving


def _vocab(model: Path) -> dict[str, int]:
    return json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]


@pytest.fixture(scope="module")
def j_id(tiny_model: Path) -> int:
    return _vocab(tiny_model)["J"]


@pytest.fixture(scope="module")
def gw(tiny_model: Path, j_id: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("sampling")
    models = [
        {"name": "tiny", "path": str(tiny_model)},
        {"name": "tiny-j", "path": str(tiny_model), "defaults": {"logit_bias": {str(j_id): 100.0}}},
        {"name": "tiny-guarded", "path": str(tiny_model), "defaults": {"loop_guard": True}},
    ]
    with serving(tmp, models) as g:
        yield g


def ask(gw: Gateway, **kw: Any) -> dict[str, Any]:
    body = chat(kw.pop("model", "tiny"), kw.pop("content", "Tell me a story"), **kw)
    r = gw.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def text_of(resp: dict[str, Any], i: int = 0) -> str:
    return resp["choices"][i]["message"]["content"]


def token_bytes(resp: dict[str, Any]) -> list[bytes]:
    return [bytes(e["bytes"]) for e in resp["choices"][0]["logprobs"]["content"]]


def test_logit_bias_forces_a_token(gw: Gateway, j_id: int) -> None:
    assert text_of(ask(gw, max_tokens=10, logit_bias={str(j_id): 100})) == "J" * 10


def test_logit_bias_bans_a_token(gw: Gateway, tiny_model: Path) -> None:
    greedy = ask(gw, max_tokens=40, logprobs=True)
    common, _ = Counter(token_bytes(greedy)).most_common(1)[0]
    from mlx_lm.tokenizer_utils import _byte_decoder

    encoder = {v: k for k, v in _byte_decoder().items()}
    banned = _vocab(tiny_model)["".join(encoder[b] for b in common)]
    after = ask(gw, max_tokens=40, logprobs=True, logit_bias={str(banned): -100})
    assert common not in token_bytes(after)


def test_model_defaults_apply_and_requests_override_them(gw: Gateway) -> None:
    assert text_of(ask(gw, model="tiny-j", max_tokens=6)) == "J" * 6
    assert text_of(ask(gw, model="tiny-j", max_tokens=6, logit_bias={})) == text_of(ask(gw, max_tokens=6))


def test_seed_reproduces_even_while_the_batch_is_shared(gw: Gateway) -> None:
    seeded = {"max_tokens": 24, "temperature": 1.0, "seed": 42}
    alone = text_of(ask(gw, **seeded))
    assert text_of(ask(gw, **seeded)) == alone
    assert text_of(ask(gw, **{**seeded, "seed": 43})) != alone
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        noise = [ex.submit(ask, gw, max_tokens=60, temperature=1.0, content=f"noise {i}") for i in range(3)]
        shared = ex.submit(ask, gw, **seeded)
        assert text_of(shared.result()) == alone
        for f in noise:
            f.result()


def test_top_k_1_min_p_1_and_tiny_top_p_equal_greedy(gw: Gateway) -> None:
    greedy = text_of(ask(gw, max_tokens=20))
    assert text_of(ask(gw, max_tokens=20, temperature=1.0, top_k=1)) == greedy
    assert text_of(ask(gw, max_tokens=20, temperature=1.0, min_p=1.0)) == greedy
    assert text_of(ask(gw, max_tokens=20, temperature=1.0, top_p=0.0001)) == greedy


def _repeats(resp: dict[str, Any]) -> int:
    toks = token_bytes(resp)
    return len(toks) - len(set(toks))


@pytest.mark.parametrize(
    "penalty",
    [
        {"repetition_penalty": 3.0, "repetition_context_size": 64},
        {"presence_penalty": 2.0, "repetition_context_size": 64},
        {"frequency_penalty": 2.0, "repetition_context_size": 64},
    ],
    ids=["repetition", "presence", "frequency"],
)
def test_penalties_lower_repeats(gw: Gateway, penalty: dict[str, Any]) -> None:
    prompt = "again again again again again again again again"
    plain = ask(gw, content=prompt, max_tokens=48, logprobs=True)
    penalised = ask(gw, content=prompt, max_tokens=48, logprobs=True, **penalty)
    assert _repeats(plain) > 10  # greedy random weights loop
    assert _repeats(penalised) < _repeats(plain)


def test_logprobs_are_sensible(gw: Gateway) -> None:
    resp = ask(gw, max_tokens=12, logprobs=True, top_logprobs=5)
    entries = resp["choices"][0]["logprobs"]["content"]
    assert len(entries) == 12
    for e in entries:
        assert e["logprob"] <= 0
        tops = e["top_logprobs"]
        assert len(tops) == 5
        values = [t["logprob"] for t in tops]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-4
        assert tops[0]["bytes"] == e["bytes"] and math.isclose(tops[0]["logprob"], e["logprob"], abs_tol=1e-5)
    assert b"".join(bytes(e["bytes"]) for e in entries).decode("utf-8", "replace") == text_of(resp)


def test_n_choices(gw: Gateway) -> None:
    resp = ask(gw, max_tokens=8, n=3, temperature=1.0, seed=7)
    assert [c["index"] for c in resp["choices"]] == [0, 1, 2]
    assert len({text_of(resp, i) for i in range(3)}) > 1
    assert resp["usage"]["completion_tokens"] == 24
    again = ask(gw, max_tokens=8, n=3, temperature=1.0, seed=7)
    assert [text_of(again, i) for i in range(3)] == [text_of(resp, i) for i in range(3)]


def test_loop_guard_stops_a_loop_and_says_so(gw: Gateway) -> None:
    plain = ask(gw, max_tokens=200)
    assert plain["choices"][0]["finish_reason"] == "length"
    guarded = ask(gw, max_tokens=200, loop_guard=True)
    assert guarded["choices"][0]["finish_reason"] == "loop"
    assert guarded["usage"]["completion_tokens"] < 200
    (info,) = guarded["usage"]["loop_guard"]
    assert info["repeats"] * info["cycle_tokens"] >= 32
    assert plain["choices"][0]["message"]["content"].startswith(text_of(guarded))


def test_loop_guard_per_model_and_overridden_per_request(gw: Gateway) -> None:
    assert ask(gw, model="tiny-guarded", max_tokens=200)["choices"][0]["finish_reason"] == "loop"
    off = ask(gw, model="tiny-guarded", max_tokens=200, loop_guard=False)
    assert off["choices"][0]["finish_reason"] == "length" and "loop_guard" not in off["usage"]


def test_completions_endpoint(gw: Gateway) -> None:
    r = gw.http.post(
        "/v1/completions",
        json={"model": "tiny", "prompt": ["Once upon", "a time"], "max_tokens": 5, "temperature": 0, "logprobs": 2},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1]
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    assert body["usage"]["completion_tokens"] == 10
    single = gw.http.post(
        "/v1/completions", json={"model": "tiny", "prompt": "Once upon", "max_tokens": 5, "temperature": 0}
    ).json()
    assert single["choices"][0]["text"] == body["choices"][0]["text"]
    assert single["usage"]["prompt_tokens"] * 1 <= body["usage"]["prompt_tokens"]
    with gw.http.stream(
        "POST",
        "/v1/completions",
        json={
            "model": "tiny",
            "prompt": "Once upon",
            "max_tokens": 5,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as s:
        from tests.servers import sse_events

        events = sse_events(s)
    assert events[-1] == "[DONE]"
    streamed = "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"])
    assert streamed == single["choices"][0]["text"]
    assert events[-2]["usage"] == single["usage"]
