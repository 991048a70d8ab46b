"""Per-request sampling, built only from mlx-lm's own samplers and logits processors.

Every parameter Hearth documents reaches mlx-lm here, per request, so requests that share a
batch keep their own settings. ``worker.selfcheck`` drives each one through these functions
and mlx-lm's batch generator once at worker start, so an mlx-lm upgrade that changes a signature
fails at load, naming the parameter, never at request time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_logits_processors,
    make_sampler,
)

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


GREEDY_BELOW = 1e-5  # a temperature below this samples greedily


def make_request_sampler(params: dict[str, Any], vocab_size: int, draws: int = 0) -> Sampler:
    """mlx-lm's sampler for these params; with a seed, the same chain on a private PRNG key.
    A top_k that keeps the whole vocabulary filters nothing, so it is left out (mlx-lm refuses it).
    ``draws``: tokens already sampled for this generation elsewhere (a resume, worker/resume.py):
    a seeded sampler's key skips that many draws, so it goes on with the same random stream."""
    temp = float(params.get("temperature", 1.0))
    top_p = float(params.get("top_p", 1.0))
    min_p = float(params.get("min_p", 0.0))
    top_k = int(params.get("top_k", 0))
    if top_k >= vocab_size:
        top_k = 0
    if top_p == 0:  # OpenAI's top_p 0 keeps only the most likely token (mlx-lm would read it as off)
        temp = 0.0
    if temp < GREEDY_BELOW:  # as vLLM: dividing by a denormal makes inf logits, and softmax NaN
        temp = 0.0
    seed = params.get("seed")
    if temp == 0:  # greedy ignores the filters: one argmax object for every greedy request
        return _shared_sampler(0.0, 1.0, 0.0, 0)
    if seed is None:
        return _shared_sampler(temp, top_p, min_p, top_k)
    return _seeded_sampler(int(seed), temp, top_p, min_p, top_k, draws)


def is_greedy(sampler: Sampler) -> bool:
    """Whether ``sampler`` is the shared argmax (a batch checks drafts of greedy rows at once)."""
    return sampler is _shared_sampler(0.0, 1.0, 0.0, 0)


def is_seeded(sampler: Sampler) -> bool:
    """Whether ``sampler`` draws from a key of its own (one draw per token, in order)."""
    return getattr(sampler, "seeded", False) is True


@functools.lru_cache(maxsize=256)
def _shared_sampler(temp: float, top_p: float, min_p: float, top_k: int) -> Sampler:
    """One sampler object per setting: mlx-lm's batch samples every sequence in one call when
    they all hold the *same* sampler object, instead of one call per sequence (the usual case:
    greedy, or the same unseeded settings). Unseeded samplers draw from the global PRNG anyway."""
    return make_sampler(temp=temp, top_p=top_p, min_p=min_p, top_k=top_k)


def _seeded_sampler(seed: int, temp: float, top_p: float, min_p: float, top_k: int, skip: int = 0) -> Sampler:
    """Same filters as ``make_sampler`` but drawing from a key of its own, so a seed reproduces
    its output whoever else shares the batch (the global PRNG is shared by every request). One
    draw per token (the batch and the direct first token call it once each), so ``skip`` draws
    put the key where it was after ``skip`` tokens."""
    key = mx.random.key(seed % 2**64)  # any integer seed, negative ones too
    for _ in range(skip):
        key, _sub = mx.random.split(key)
    state = {"key": key}

    def sampler(logprobs: mx.array) -> mx.array:
        if 0 < top_p < 1.0:
            logprobs = apply_top_p(logprobs, top_p)
        if min_p != 0.0:
            logprobs = apply_min_p(logprobs, min_p, 1)
        if top_k > 0:
            logprobs = apply_top_k(logprobs, top_k)
        state["key"], sub = mx.random.split(state["key"])
        return mx.random.categorical(logprobs * (1 / temp), key=sub)

    sampler.seeded = True  # type: ignore[attr-defined]
    return sampler


class ParamError(ValueError):
    """A parameter the gateway could not check (it needs the model): a 400 naming it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def make_request_processors(params: dict[str, Any], vocab_size: int) -> list[LogitsProcessor]:
    """mlx-lm's logits processors: logit_bias, repetition, presence and frequency penalties."""
    bias = params.get("logit_bias") or None
    for key in bias or {}:
        if not 0 <= int(key) < vocab_size:
            raise ParamError(
                "logit_bias", f"logit_bias: token id {key} is not in the vocabulary (0 to {vocab_size - 1})"
            )
    ctx = int(params.get("repetition_context_size", 20))
    return make_logits_processors(
        logit_bias={int(k): float(v) for k, v in bias.items()} if bias else None,
        repetition_penalty=params.get("repetition_penalty"),
        repetition_context_size=ctx,
        presence_penalty=params.get("presence_penalty"),
        presence_context_size=ctx,
        frequency_penalty=params.get("frequency_penalty"),
        frequency_context_size=ctx,
    )
