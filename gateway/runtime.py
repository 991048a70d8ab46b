"""The private runtime folder that holds the worker socket (ipc://), readable only by us."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def make_runtime_dir() -> Path:
    """A fresh 0700 folder under $XDG_RUNTIME_DIR (or the temp folder). Short, for ipc:// paths."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.access(base, os.W_OK):
        base = None
    path = Path(tempfile.mkdtemp(prefix="hearth-", dir=base))
    path.chmod(0o700)
    return path


def remove_runtime_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def default_endpoint(runtime_dir: Path) -> str:
    return f"ipc://{runtime_dir / 'workers.sock'}"
