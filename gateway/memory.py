"""How much memory a model will take once loaded, estimated before it is loaded.

The residency limits (``max_loaded_models``, ``memory_budget``) need a number per model
before any worker runs, and the gateway never imports MLX, so the estimate comes from files:

- an MLX folder: the size of its ``*.safetensors`` files (MLX maps them as they are);
- a GGUF file: its parameter count from the tensor shapes in its header, times the bytes per
  parameter of the dtype the worker will import it to (float32: 4, float16/bfloat16: 2);
  ``keep`` (and ``auto`` on a GPU backend, Metal or CUDA, where workers keep the GGUF's
  quantized weights: ``shared.device.import_dtype``): the file's size;
- a zipped embedding model: the uncompressed size of the ``*.safetensors`` inside;

plus the model's ``prompt_cache_bytes`` (the KV cache it may keep; not for an embedding model,
which keeps none), all times ``replicas``.
Activations and the running batch's KV are not counted: the estimate is a planning number.
Once a model's workers report their real footprint (``reported``), the budget counts the larger
of the two (``held``), and ``GET /admin/models`` shows both.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.config import ModelConfig
from shared.device import import_dtype, installed_backend
from shared.protocol import Heartbeat

BYTES_PER_PARAM = {"float32": 4, "float16": 2, "bfloat16": 2}
# GGUF metadata value types: fixed sizes; 8 is a string, 9 an array
_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class GGUFHeaderError(ValueError):
    """Not a GGUF file Hearth can read the tensor shapes of."""


@dataclass(frozen=True)
class Estimate:
    weights: int  # bytes of weights per replica (0 when unknown)
    per_replica: int  # weights + prompt cache budget
    total: int  # per_replica * replicas
    how: str  # where the weights number comes from, for admin output


def import_dtype_guess(dtype: str) -> str:
    """The dtype a worker on this machine imports a GGUF to: ``shared.device.import_dtype`` (the
    rule the worker applies too) for the backend the installed MLX wheels give (no MLX import)."""
    return import_dtype(dtype, installed_backend())


def _read(f: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFHeaderError("the file ends inside its header")
    return int(struct.unpack(fmt, data)[0])


def _skip_string(f: BinaryIO) -> None:
    f.seek(_read(f, "<Q"), 1)


def _skip_value(f: BinaryIO, kind: int) -> None:
    if kind in _GGUF_SCALAR:
        f.seek(_GGUF_SCALAR[kind], 1)
    elif kind == 8:
        _skip_string(f)
    elif kind == 9:
        item, count = _read(f, "<I"), _read(f, "<Q")
        if item in _GGUF_SCALAR:
            f.seek(_GGUF_SCALAR[item] * count, 1)
        else:
            for _ in range(count):
                _skip_value(f, item)
    else:
        raise GGUFHeaderError(f"unknown metadata value type {kind}")


def gguf_parameters(path: str | Path) -> int:
    """The number of parameters in a GGUF file (v2/v3), from its tensor infos; reads only the header."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFHeaderError(f"{path} is not a GGUF file")
        if _read(f, "<I") < 2:
            raise GGUFHeaderError(f"{path}: GGUF version 1 is not supported")
        tensors, kvs = _read(f, "<Q"), _read(f, "<Q")
        for _ in range(kvs):
            _skip_string(f)
            _skip_value(f, _read(f, "<I"))
        total = 0
        for _ in range(tensors):
            _skip_string(f)
            count = 1
            for _ in range(_read(f, "<I")):
                count *= _read(f, "<Q")
            f.seek(4 + 8, 1)  # ggml type, data offset
            total += count
        return total


def weights_bytes(cfg: ModelConfig) -> tuple[int, str]:
    """Bytes of weights one loaded replica holds, and how that was worked out."""
    path = Path(cfg.path).expanduser()
    if path.is_file() and zipfile.is_zipfile(path):  # a zipped embedding model: what it unpacks to
        with zipfile.ZipFile(path) as zf:
            packed = [i for i in zf.infolist() if i.filename.endswith(".safetensors")]
        return sum(i.file_size for i in packed), f"{len(packed)} safetensors file(s) in the zip"
    if path.is_file():
        dtype = import_dtype_guess(cfg.dtype)
        if dtype in BYTES_PER_PARAM:
            try:
                params = gguf_parameters(path)
            except (OSError, GGUFHeaderError) as e:
                return path.stat().st_size, f"file size ({e})"
            return params * BYTES_PER_PARAM[dtype], f"{params:,} parameters as {dtype}"
        return path.stat().st_size, "GGUF file size (quantized weights kept)"
    if path.is_dir():
        files = list(path.glob("*.safetensors"))
        return sum(f.stat().st_size for f in files), f"{len(files)} safetensors file(s)"
    return 0, "unknown (no local weight files)"


def estimate(cfg: ModelConfig) -> Estimate:
    """An embedding model keeps no KV prompt cache, so its ``prompt_cache_bytes`` don't count."""
    weights, how = weights_bytes(cfg)
    per_replica = weights + (cfg.prompt_cache_bytes if cfg.kind == "chat" else 0)
    return Estimate(weights, per_replica, per_replica * cfg.replicas, how)


# -- what workers report ---------------------------------------------------------------------
# A worker's heartbeat carries its footprint as the OS sees it (RSS on Linux, the physical
# footprint on macOS: ``memory_bytes``) and MLX's own counters beside it (worker/memory.py).
# Every figure the gateway shows or budgets with is the footprint; the MLX ones explain it.

REPORTED = ("memory_bytes", "mlx_active_bytes", "mlx_cache_bytes", "mlx_peak_bytes")


def reported(hb: Heartbeat | None) -> dict[str, int | None]:
    """One worker's memory figures (None before its first heartbeat)."""
    return {k: (getattr(hb, k) if hb is not None else None) for k in REPORTED}


def reported_total(heartbeats: Iterable[Heartbeat | None]) -> dict[str, int | None]:
    """The figures summed over a model's workers (None when none has reported yet)."""
    beats = [hb for hb in heartbeats if hb is not None]
    return {k: (sum(getattr(hb, k) for hb in beats) if beats else None) for k in REPORTED}


def held(estimate: int, heartbeats: Iterable[Heartbeat | None]) -> int:
    """What a resident model counts for under ``memory_budget``: its estimate until its workers
    report, then the larger of the estimate and their real footprint (a worker that outgrew its
    estimate makes room for fewer other models)."""
    footprint = sum(hb.memory_bytes for hb in heartbeats if hb is not None)
    return max(estimate, footprint)


def memory_kinds(heartbeats: Iterable[Heartbeat | None]) -> list[tuple[str, int]]:
    """``hearth_worker_memory_bytes`` samples of a model's workers, by kind (none before a heartbeat)."""
    total = reported_total(heartbeats)
    names = ("footprint", "mlx_active", "mlx_cache", "mlx_peak")
    return [(kind, value) for kind, key in zip(names, REPORTED, strict=True) if (value := total[key]) is not None]
