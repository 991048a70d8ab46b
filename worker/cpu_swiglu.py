"""The MLP's SwiGLU activation on the CPU with NumPy's ``exp``.

mlx-lm's ``swiglu(gate, x)`` is ``silu(gate) * x``, and ``silu`` takes a sigmoid: one ``exp``
per element of the MLP's hidden width. MLX's CPU ``exp`` runs one element at a time (~17 ns
each here), so a decode step of 8 SmolLM2 rows spends ~0.25 ms a layer on it, and a 512-token
prefill chunk ~13 ms a layer; NumPy's float32 ``exp`` is vectorised. Measured on a decode step of
8 rows over 300 positions: 88 ms -> 80.5 ms (one row: 46 -> 45 ms). The round trip waits for the
layer's gate and up projections, which costs less than the ``exp`` it saves at every size, as in
``worker.cpu_attention``; every float32 call takes it, so a row's numbers don't depend on the
batch it shares. Its results differ from MLX's in the last bits (NumPy's ``exp``), like the
attention's softmax.

``install`` swaps it in for ``swiglu`` in the loaded mlx-lm model modules, on the CPU backend
only (``shared.device.cpu_swiglu``); other dtypes go to the original.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import numpy as np

from shared.device import cpu_swiglu
from worker.device import backend
from worker.model_swap import swap

_original: Callable[[mx.array, mx.array], mx.array] | None = None


def swiglu(gate: mx.array, x: mx.array) -> mx.array:
    assert _original is not None
    if gate.dtype != mx.float32 or x.dtype != mx.float32 or gate.shape != x.shape:
        return _original(gate, x)
    g = np.asarray(gate)
    with np.errstate(over="ignore"):  # exp(-g) overflows to inf for very negative g: silu is then -0
        out = g / (1.0 + np.exp(-g)) * np.asarray(x)
    return mx.array(out)


def install() -> int:
    """Use this activation in every loaded mlx-lm model module that uses ``swiglu`` (on the CPU
    only); returns how many modules now use it. Safe to call again."""
    global _original
    if not cpu_swiglu(backend()):
        return 0
    from mlx_lm.models import activations

    if _original is None:
        _original = activations.swiglu
    return swap("swiglu", _original, swiglu, keep=activations)  # its other activations call the original
