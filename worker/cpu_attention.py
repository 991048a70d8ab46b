"""Attention on the CPU with NumPy's softmax.

On the CPU, MLX computes ``exp`` one element at a time (~11-17 ns each here), so the softmax
dominates attention: a 70-token user turn after a 1,500-token system prompt spends ~0.3 s in
``exp`` alone, and a decode step of 8 sequences over 300 positions spends ~0.4 ms a layer on it
(of ~1.1 ms for the whole attention). NumPy's float32 ``exp`` is vectorised (~20x faster on
x86), so the scores are computed by MLX (BLAS), the softmax by NumPy, and the weighted sum by
MLX again. The round trip through NumPy waits for the layer's scores, which costs less than the
``exp`` it saves at every size measured, down to one sequence over 30 positions (SmolLM2-135M,
a decode step: 8 sequences over 300 positions 105.8 -> 91.4 ms, over 1,000 positions 132 -> 126
ms (MLX's own attention: 174 ms); one sequence over 30 positions 48-54 -> 46-48 ms). So every
call it handles takes this path, whatever the batch: a sequence's numbers don't depend on which
other sequences share its step.

``install`` swaps this function in for mlx-lm's ``scaled_dot_product_attention`` in the model
modules that use it, and only on the CPU backend (``shared.device.cpu_attention``); Metal and
CUDA keep MLX's fused kernel. Anything it does not
handle (quantized caches, attention sinks, additive masks, non-float32) goes to the original.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np

from shared.device import cpu_attention
from worker.device import backend
from worker.model_swap import swap

_original: Callable[..., mx.array] | None = None


def scaled_dot_product_attention(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    cache: Any,
    scale: float,
    mask: mx.array | str | None,
    sinks: mx.array | None = None,
) -> mx.array:
    assert _original is not None
    b, hq, n, d = queries.shape
    s = keys.shape[2]
    if not _handles(queries, keys, cache, mask, sinks):
        return _original(queries, keys, values, cache, scale=scale, mask=mask, sinks=sinks)
    hkv = keys.shape[1]
    rep = hq // hkv
    # query head h uses key head h // rep: group the rep query heads of a key head as rows
    grouped = (queries * scale).reshape(b, hkv, rep * n, d)
    scores = np.array(grouped @ keys.swapaxes(-1, -2), copy=True).reshape(b, hkv, rep, n, s)
    if isinstance(mask, str):  # "causal": query i (of the last n) sees keys up to s - n + i
        allowed = np.arange(s)[None, :] <= np.arange(s - n, s)[:, None]
        np.copyto(scores, -np.inf, where=~allowed)  # broadcast: no score-sized mask
    elif mask is not None:  # a boolean mask [b or 1, 1, n, s]: True where attention is allowed
        allowed = np.array(mask).reshape(mask.shape[0], 1, 1, n, s)
        np.copyto(scores, -np.inf, where=~allowed)
    top = scores.max(axis=-1, keepdims=True)
    top[~np.isfinite(top)] = 0.0  # a fully masked row (padding) gives zeros, not NaN
    scores -= top
    np.exp(scores, out=scores)
    total = scores.sum(axis=-1, keepdims=True)
    total[total == 0] = 1.0
    scores /= total
    weights = mx.array(scores.reshape(b, hkv, rep * n, s))
    return (weights @ values).reshape(b, hq, n, d)


def _handles(queries: mx.array, keys: mx.array, cache: Any, mask: Any, sinks: Any) -> bool:
    if sinks is not None or hasattr(cache, "bits") or queries.dtype != mx.float32 or keys.dtype != mx.float32:
        return False
    if queries.shape[1] % keys.shape[1]:
        return False
    if mask is None or (isinstance(mask, str) and mask == "causal"):
        return True
    return (
        isinstance(mask, mx.array)
        and mask.dtype == mx.bool_
        and mask.ndim == 4
        and mask.shape[1] == 1
        and mask.shape[2:] == (queries.shape[2], keys.shape[2])
    )


def install() -> int:
    """Use this attention in every loaded mlx-lm model module (on the CPU only); returns how
    many modules now use it. Safe to call again (e.g. after another model module loaded)."""
    global _original
    if not cpu_attention(backend()):
        return 0
    from mlx_lm.models import base

    if _original is None:
        _original = base.scaled_dot_product_attention
    return swap("scaled_dot_product_attention", _original, scaled_dot_product_attention)
