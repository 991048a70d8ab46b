"""Preloading Debian's OpenBLAS into worker processes on Linux.

MLX's Linux CPU wheel bundles a reference BLAS that runs float32 matmuls ~30x slower than
OpenBLAS. The dynamic loader only honours ``LD_PRELOAD`` at process start, so the supervisor
sets it in a worker's environment at spawn, and a worker started on its own re-executes itself
once with it (see ``worker.__main__``). ``HEARTH_NO_OPENBLAS=1`` turns this off, and so does a
GPU backend (``shared.device.preload_openblas``): there the matrix work runs on the device.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from shared.device import installed_backend, preload_openblas

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
)


def openblas_path() -> str | None:
    """The OpenBLAS library to preload here, or None (not Linux, not the CPU backend, not
    installed, or turned off)."""
    if not sys.platform.startswith("linux") or os.environ.get("HEARTH_NO_OPENBLAS") == "1":
        return None
    if not preload_openblas(installed_backend()):
        return None
    return next((p for p in OPENBLAS_CANDIDATES if os.path.exists(p)), None)


def with_openblas(env: Mapping[str, str]) -> dict[str, str] | None:
    """``env`` plus OpenBLAS in ``LD_PRELOAD``; None when there is nothing to add."""
    lib = openblas_path()
    current = env.get("LD_PRELOAD", "")
    if lib is None or lib in current.split(":"):
        return None
    out = dict(env)
    out["LD_PRELOAD"] = f"{lib}:{current}" if current else lib
    return out
