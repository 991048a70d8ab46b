"""Stacked projections (worker/fused_projections.py) on the tiny random-weight model: every
layer's q/k/v and gate/up groups are stacked, the stacked model computes the logits of the
model as mlx-lm builds it (plain and quantized weights, prefill and cached decode steps, greedy
tokens), members called out of order or on other inputs still give their own projection, and
what can't be stacked is left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache

from worker import fused_projections
from worker.fused_projections import FusedMember


def _pair(tiny_model: Path, quantize: bool = False) -> tuple[Any, Any]:
    plain, stacked = load(str(tiny_model))[0], load(str(tiny_model))[0]
    if quantize:
        for m in (plain, stacked):
            nn.quantize(m, group_size=32, bits=4)
    return plain, stacked


def _decode(model: Any, prompt: list[list[int]], steps: int) -> tuple[list[mx.array], list[list[int]]]:
    """Logits of the prefill and of ``steps`` greedy decode steps, and the tokens chosen."""
    cache = make_prompt_cache(model)
    logits = model(mx.array(prompt), cache=cache)[:, -1]
    seen, tokens = [logits], []
    for _ in range(steps):
        y = mx.argmax(logits, axis=-1)
        tokens.append(y.tolist())
        logits = model(y[:, None], cache=cache)[:, -1]
        seen.append(logits)
    return seen, tokens


@pytest.mark.parametrize("quantize", [False, True])
def test_stacked_model_computes_the_same_logits(tiny_model: Path, quantize: bool) -> None:
    plain, stacked = _pair(tiny_model, quantize)
    layers = len(plain.model.layers)
    assert fused_projections.install(stacked) == 2 * layers
    assert all(isinstance(layer.self_attn.k_proj, FusedMember) for layer in stacked.model.layers)
    assert all(isinstance(layer.mlp.up_proj, FusedMember) for layer in stacked.model.layers)
    prompt = [[5, 9, 200, 31, 7, 64, 3, 88], [17, 2, 40, 41, 42, 1, 300, 12]]  # the vocabulary has 487
    ours, our_tokens = _decode(stacked, prompt, 12)
    theirs, their_tokens = _decode(plain, prompt, 12)
    assert our_tokens == their_tokens
    for a, b in zip(ours, theirs, strict=True):
        assert mx.allclose(a, b, rtol=1e-5, atol=1e-5).item()


def test_parameters_are_counted_once(tiny_model: Path) -> None:
    plain, stacked = _pair(tiny_model)
    fused_projections.install(stacked)

    def size(model: Any) -> int:
        from mlx.utils import tree_flatten

        return sum(v.size for _, v in tree_flatten(model.parameters()))

    assert size(stacked) == size(plain)


def test_members_called_out_of_order_or_on_other_inputs_give_their_own_projection(tiny_model: Path) -> None:
    plain, stacked = _pair(tiny_model)
    fused_projections.install(stacked)
    a, b = plain.model.layers[0].self_attn, stacked.model.layers[0].self_attn
    x = mx.random.normal((2, 3, a.q_proj.weight.shape[1]), key=mx.random.key(0))
    y = mx.random.normal(x.shape, key=mx.random.key(1))
    for got, want in [
        (b.v_proj(x), a.v_proj(x)),  # the last member first
        (b.q_proj(y), a.q_proj(y)),  # another input while x's k slice is pending
        (b.k_proj(x), a.k_proj(x)),
        (b.k_proj(y), a.k_proj(y)),
        (b.k_proj(y), a.k_proj(y)),  # the same member twice on one input
        (b.v_proj(y), a.v_proj(y)),
    ]:
        assert got.shape == want.shape
        assert mx.allclose(got, want, rtol=1e-5, atol=1e-5).item()


def test_groups_that_cant_be_stacked_are_left_alone() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = nn.Linear(8, 8, bias=False)
            self.k_proj = nn.Linear(8, 4, bias=True)  # a bias the others lack
            self.v_proj = nn.Linear(8, 4, bias=False)
            self.gate_proj = nn.Linear(8, 16, bias=False)
            self.up_proj = nn.QuantizedLinear(64, 16, bias=False, group_size=32)  # another kind and input width

    block = Block()
    assert fused_projections.install(block) == 0
    assert type(block.k_proj) is nn.Linear and type(block.up_proj) is nn.QuantizedLinear
