"""The worker's view of its MLX backend: asked of MLX itself (the gateway guesses it from the
installed wheels, see ``shared.device``, where every backend-dependent default is decided)."""

from __future__ import annotations

from typing import Any

import mlx.core as mx


def backend() -> str:
    """``cpu``, ``cuda`` or ``metal``: where this process's MLX computes by default."""
    if mx.default_device() == mx.cpu:
        return "cpu"
    return "metal" if mx.metal.is_available() else "cuda"


def describe() -> dict[str, Any]:
    """The device, for the worker's log line at ready: backend, name, total memory if known."""
    info: dict[str, Any] = {"backend": backend()}
    try:
        raw = mx.device_info()
    except Exception:  # not every backend reports it; the log line is informative only
        raw = {}
    for key in ("device_name", "architecture", "memory_size"):
        if key in raw:
            info[key] = raw[key]
    return info
