"""Swapping a function that mlx-lm's model modules import by name (``from .base import
scaled_dot_product_attention``, ``from .activations import swiglu``): each loaded
``mlx_lm.models.*`` module's own reference is pointed at the replacement, so the model code
stays mlx-lm's. Used by the CPU backend's NumPy kernels (``worker.cpu_attention``,
``worker.cpu_swiglu``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any


def swap(
    name: str, original: Callable[..., Any], replacement: Callable[..., Any], keep: ModuleType | None = None
) -> int:
    """Point ``name`` at ``replacement`` in every loaded mlx-lm model module where it is still
    ``original``, except ``keep`` (the module that defines it, when its own other functions
    must go on calling the original); returns how many modules changed. Safe to call again:
    modules imported since (another model's) are swapped then."""
    count = 0
    for module_name, module in list(sys.modules.items()):
        if module is keep or not module_name.startswith("mlx_lm.models."):
            continue
        if getattr(module, name, None) is original:
            setattr(module, name, replacement)
            count += 1
    return count
