"""How every Hearth child process is started: the one place for the worker's command line and
for a child's environment (Hearth's source on ``PYTHONPATH``, OpenBLAS preloaded on a Linux
CPU, the MLX backend's settings).

Workers are exec'd (``python -m worker``), never forked; the supervisor's workers get
``--parent-pid`` so they exit when the gateway goes, a worker started on its own (``hearth
worker``) gets its CURVE keys instead. The GGUF importer and ``hearth bench --raw`` are children
with the same environment, since MLX is only ever imported there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from shared.blas import with_openblas
from shared.config import ModelConfig
from shared.device import apply_worker_env, installed_backend

ROOT = Path(__file__).resolve().parent.parent


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (the process's environment) with OpenBLAS preloaded (CPU backend), the backend's
    MLX settings where unset (``shared.device.worker_env``: the ``--raw`` reference then runs MLX
    as the workers do) and Hearth importable."""
    base = os.environ if base is None else base
    env = with_openblas(base) or dict(base)
    apply_worker_env(env, installed_backend())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def worker_command(
    endpoint: str,
    worker_id: str,
    model: ModelConfig,
    parent_pid: int | None = None,
    server_key: str | None = None,
    key: str | None = None,
) -> list[str]:
    cmd = [
        sys.executable, "-m", "worker",
        "--endpoint", endpoint,
        "--worker-id", worker_id,
        "--model-json", model.to_json().decode(),
    ]  # fmt: skip
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    for flag, value in (("--server-key", server_key), ("--key", key)):
        if value:
            cmd += [flag, value]
    return cmd
