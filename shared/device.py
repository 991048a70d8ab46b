"""Decisions that depend on where MLX computes (its CPU or a GPU), in one place for both sides.

The worker knows its device (MLX's default device); the gateway never imports MLX, so it
infers the same fact from the machine: Apple Silicon runs MLX on Metal, and a machine with an
``mlx-cuda-*`` wheel installed runs it on CUDA. Both then apply the same rule, so the gateway's
memory estimate counts the weights the worker really loads.
"""

from __future__ import annotations

import importlib.metadata
import platform


def import_dtype(dtype: str, gpu: bool) -> str:
    """The dtype a GGUF file is imported to. ``auto``: float32 on the CPU, where MLX's quantized
    kernels are slow and float32 is ~25x faster for prefill; on a GPU (Metal, CUDA) the GGUF's
    own quantized weights (``keep``) are the fast choice."""
    if dtype != "auto":
        return dtype
    return "keep" if gpu else "float32"


def gpu_expected() -> bool:
    """Whether workers started on this machine run MLX on a GPU (without importing MLX)."""
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return True
    names = (d.name or "" for d in importlib.metadata.distributions())
    return any(n.lower().replace("_", "-").startswith("mlx-cuda") for n in names)
