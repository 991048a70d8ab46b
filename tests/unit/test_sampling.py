"""worker.sampling: per-request samplers and logits processors on mlx-lm (MLX arrays, no model)."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import pytest

from shared.protocol import SAMPLING_PARAMS
from worker.sampling import ParamError, make_request_processors, make_request_sampler

V = 600  # vocabulary size of the tiny test model


def random_logprobs(seed: int, vocab: int = V, scale: float = 2.0) -> mx.array:
    logits = mx.random.normal((1, vocab), key=mx.random.key(seed)) * scale
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def uniform_logprobs(vocab: int = V) -> mx.array:
    return mx.full((1, vocab), -float(mx.log(mx.array(vocab)).item()))


def draws(params: dict[str, Any], logprobs: mx.array, k: int = 20) -> list[int]:
    s = make_request_sampler(params, V)
    return [int(s(logprobs).item()) for _ in range(k)]


def apply(processors: list[Any], tokens: list[int], logits: mx.array) -> mx.array:
    toks = mx.array(tokens, dtype=mx.int32)
    for p in processors:
        logits = p(toks, logits)
    return logits


SWEEP: list[tuple[str, Any]] = [
    ("temperature", 0.0),
    ("temperature", 2.0),
    ("top_p", 0.9),
    ("top_p", 1.0),
    ("top_p", 0.0),
    ("top_k", 1),
    ("top_k", 5),
    ("top_k", V),  # the whole vocabulary: filters nothing (mlx-lm itself refuses it)
    ("top_k", 10**9),
    ("min_p", 0.05),
    ("min_p", 1.0),
    ("seed", 1234),
    ("seed", -1),
    ("seed", 0),
    ("seed", 2**64 - 1),
    ("seed", -(2**63)),
    ("presence_penalty", 0.5),
    ("presence_penalty", -2.0),
    ("frequency_penalty", 0.5),
    ("repetition_penalty", 1.1),
    ("repetition_context_size", 1),
    ("logit_bias", {"0": 5.0, str(V - 1): -100.0}),
    ("logit_bias", {}),
]


@pytest.mark.parametrize(("name", "value"), SWEEP, ids=[f"{n}={v!r}"[:40] for n, v in SWEEP])
@pytest.mark.parametrize("seeded", [False, True], ids=["unseeded", "seeded"])
def test_every_documented_parameter_builds_and_samples_on_a_600_vocabulary(name: str, value: Any, seeded: bool) -> None:
    """What the worker's load-time self-check does per parameter, without a model."""
    params: dict[str, Any] = {"temperature": 0.7, name: value}
    if seeded and name != "seed":
        params["seed"] = 7
    sampler = make_request_sampler(params, V)
    processors = make_request_processors(params, V)
    logits = apply(processors, [1, 2, 3, 2, 1], random_logprobs(1))
    assert logits.shape == (1, V)
    tok = sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
    assert tok.shape == (1,)
    assert 0 <= int(tok.item()) < V


def test_sweep_covers_every_sampling_param() -> None:
    assert {n for n, _ in SWEEP} == set(SAMPLING_PARAMS)


# ---- seeds -------------------------------------------------------------------------------------


def test_same_seed_same_tokens_other_seed_other_tokens() -> None:
    lp = uniform_logprobs()
    a = draws({"temperature": 1.0, "seed": 42}, lp)
    b = draws({"temperature": 1.0, "seed": 42}, lp)
    c = draws({"temperature": 1.0, "seed": 43}, lp)
    assert a == b
    assert a != c
    assert len(set(a)) > 5  # it really samples


def test_seeded_sampler_ignores_the_global_prng() -> None:
    lp = random_logprobs(3, scale=0.5)
    s1 = make_request_sampler({"temperature": 1.0, "seed": 9, "top_p": 0.95, "min_p": 0.01, "top_k": 100}, V)
    s2 = make_request_sampler({"temperature": 1.0, "seed": 9, "top_p": 0.95, "min_p": 0.01, "top_k": 100}, V)
    first = [int(s1(lp).item()) for _ in range(20)]
    second = []
    for i in range(20):
        mx.random.seed(1000 + i)  # others sharing the batch move the global state
        mx.random.uniform(shape=(3,))
        second.append(int(s2(lp).item()))
    assert first == second


def test_negative_seed_is_taken_modulo_2_64() -> None:
    lp = uniform_logprobs()
    assert draws({"temperature": 1.0, "seed": -1}, lp) == draws({"temperature": 1.0, "seed": 2**64 - 1}, lp)


def test_seeded_temperature_zero_is_greedy() -> None:
    lp = random_logprobs(5)
    best = int(mx.argmax(lp, axis=-1).item())
    assert set(draws({"temperature": 0, "seed": 1}, lp, 5)) == {best}


# ---- filters -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [None, 11])
def test_temperature_zero_is_argmax(seed: int | None) -> None:
    for k in range(5):
        lp = random_logprobs(100 + k)
        best = int(mx.argmax(lp, axis=-1).item())
        params: dict[str, Any] = {"temperature": 0.0}
        if seed is not None:
            params["seed"] = seed
        assert draws(params, lp, 3) == [best] * 3


@pytest.mark.parametrize("seed", [None, 11])
def test_top_k_1_with_temperature_1_is_argmax(seed: int | None) -> None:
    lp = random_logprobs(7, scale=0.3)  # flat enough that plain sampling would wander
    best = int(mx.argmax(lp, axis=-1).item())
    params: dict[str, Any] = {"temperature": 1.0, "top_k": 1}
    if seed is not None:
        params["seed"] = seed
    assert set(draws(params, lp)) == {best}
    assert len(set(draws({"temperature": 1.0, "seed": 11}, lp))) > 1  # without top_k it would not be


def test_top_k_keeps_only_the_k_best() -> None:
    lp = random_logprobs(8, scale=0.3)
    top3 = set(mx.argsort(-lp, axis=-1)[0, :3].tolist())
    assert set(draws({"temperature": 1.0, "top_k": 3, "seed": 1}, lp, 40)) <= top3


def test_top_k_at_or_past_the_vocabulary_filters_nothing() -> None:
    lp = uniform_logprobs()
    for k in (V, V + 1, 10**9):
        assert draws({"temperature": 1.0, "top_k": k, "seed": 5}, lp) == draws({"temperature": 1.0, "seed": 5}, lp)


@pytest.mark.parametrize("seed", [None, 3])
def test_tiny_top_p_keeps_only_the_best(seed: int | None) -> None:
    lp = random_logprobs(12, scale=0.3)
    best = int(mx.argmax(lp, axis=-1).item())
    params: dict[str, Any] = {"temperature": 1.0, "top_p": 1e-6}
    if seed is not None:
        params["seed"] = seed
    assert set(draws(params, lp)) == {best}


@pytest.mark.parametrize("seed", [None, 3])
def test_top_p_zero_keeps_only_the_best(seed: int | None) -> None:
    lp = random_logprobs(12, scale=0.3)
    best = int(mx.argmax(lp, axis=-1).item())
    params: dict[str, Any] = {"temperature": 1.0, "top_p": 0.0}
    if seed is not None:
        params["seed"] = seed
    assert set(draws(params, lp)) == {best}


def test_min_p_1_keeps_only_the_best() -> None:
    lp = random_logprobs(12, scale=0.3)
    best = int(mx.argmax(lp, axis=-1).item())
    assert set(draws({"temperature": 1.0, "min_p": 1.0, "seed": 3}, lp)) == {best}


# ---- logits processors -------------------------------------------------------------------------


def test_no_parameters_no_processors() -> None:
    assert make_request_processors({}, V) == []
    assert make_request_processors({"logit_bias": {}}, V) == []
    assert make_request_processors({"logit_bias": None, "repetition_penalty": None}, V) == []


def test_logit_bias_makes_token_3_the_argmax() -> None:
    logits = random_logprobs(21)
    assert int(mx.argmax(logits, axis=-1).item()) != 3
    out = apply(make_request_processors({"logit_bias": {"3": 100}}, V), [], logits)
    assert int(mx.argmax(out, axis=-1).item()) == 3
    assert out[0, 3].item() == pytest.approx(logits[0, 3].item() + 100, abs=1e-3)
    # and the sampler then picks it
    lp = out - mx.logsumexp(out, axis=-1, keepdims=True)
    assert set(draws({"temperature": 1.0, "seed": 4}, lp)) == {3}


def test_logit_bias_minus_100_bans_a_token() -> None:
    logits = random_logprobs(22)
    best = int(mx.argmax(logits, axis=-1).item())
    out = apply(make_request_processors({"logit_bias": {str(best): -100}}, V), [], logits)
    assert int(mx.argmax(out, axis=-1).item()) != best


@pytest.mark.parametrize("key", [str(V), "100000", "-1"])
def test_logit_bias_outside_the_vocabulary_is_a_param_error(key: str) -> None:
    with pytest.raises(ParamError) as e:
        make_request_processors({"logit_bias": {key: 1.0}}, V)
    assert e.value.param == "logit_bias"
    assert key in str(e.value)


def test_last_token_id_is_in_the_vocabulary() -> None:
    make_request_processors({"logit_bias": {str(V - 1): 1.0}}, V)


def test_repetition_penalty_lowers_a_token_in_the_context() -> None:
    logits = mx.zeros((1, V))
    logits[0, 5] = 2.0
    logits[0, 6] = -2.0
    logits[0, 7] = 2.0
    out = apply(make_request_processors({"repetition_penalty": 1.5}, V), [5, 6, 9], logits)
    assert out[0, 5].item() == pytest.approx(2.0 / 1.5)  # positive: divided
    assert out[0, 6].item() == pytest.approx(-3.0)  # negative: multiplied
    assert out[0, 7].item() == pytest.approx(2.0)  # not in the context: unchanged
    assert int(mx.argmax(out, axis=-1).item()) == 7


def test_repetition_context_size_limits_the_window() -> None:
    logits = mx.full((1, V), 1.0)
    out = apply(
        make_request_processors({"repetition_penalty": 2.0, "repetition_context_size": 2}, V), [5, 6, 7], logits
    )
    assert out[0, 5].item() == pytest.approx(1.0)  # outside the last 2 tokens
    assert out[0, 6].item() == pytest.approx(0.5)
    assert out[0, 7].item() == pytest.approx(0.5)


def test_presence_and_frequency_penalties() -> None:
    logits = mx.zeros((1, V))
    out = apply(make_request_processors({"presence_penalty": 0.5}, V), [3, 3, 4], logits)
    assert out[0, 3].item() == pytest.approx(-0.5) and out[0, 4].item() == pytest.approx(-0.5)
    out = apply(make_request_processors({"frequency_penalty": 0.5}, V), [3, 3, 4], mx.zeros((1, V)))
    assert out[0, 3].item() == pytest.approx(-1.0) and out[0, 4].item() == pytest.approx(-0.5)
    assert out[0, 0].item() == 0.0
