"""The numbers a split needs, read from a model's files before any worker starts.

A worker group splits a model over its ranks (docs/operations.md, Worker groups): tensor
parallelism (mlx-lm's ``shard``) gives each rank ``1/N`` of the attention heads, of the KV heads
and of the MLP's hidden units, so each must divide by the group's size; pipeline parallelism
gives each rank whole layers. mlx-lm fails deep inside attention when they don't (two ranks of
SmolLM2: ``query shape (1,4,35,72)`` against ``keys (1,1,35,96)``), so the gateway checks first,
from ``config.json`` or a GGUF file's header (its metadata only: no tensor is read, and the
gateway never imports MLX).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class ShapeError(ValueError):
    """The model's files don't say what a split needs."""


@dataclass(frozen=True)
class Shape:
    model_type: str
    heads: int
    kv_heads: int
    intermediate: int  # the MLP's hidden units
    layers: int


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ShapeError("the GGUF file ends inside its header")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    data = f.read(n)
    if len(data) != n:
        raise ShapeError("the GGUF file ends inside its header")
    return data.decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int, keep: bool) -> Any:
    """One metadata value (``keep``: returned; else skipped, arrays without reading them)."""
    if kind in _SCALARS:
        return _read(f, _SCALARS[kind])
    if kind == 8:
        return _string(f)
    if kind == 9:
        item, count = _read(f, "<I"), _read(f, "<Q")
        if item in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item]) * count, 1)
        else:
            for _ in range(count):
                _value(f, item, False)
        return None
    raise ShapeError(f"unknown GGUF metadata value type {kind}")


def gguf_metadata(path: Path) -> dict[str, Any]:
    """A GGUF file's scalar and string metadata (arrays left out: the vocabulary is large)."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ShapeError(f"{path} is not a GGUF file")
        if _read(f, "<I") < 2:
            raise ShapeError(f"{path}: GGUF version 1 is not supported")
        _read(f, "<Q")  # tensors
        out: dict[str, Any] = {}
        for _ in range(_read(f, "<Q")):
            key = _string(f)
            kind = _read(f, "<I")
            value = _value(f, kind, True)
            if value is not None:
                out[key] = value
        return out


def _positive(value: Any, what: str, where: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShapeError(f"{where} gives no {what}")
    return value


def read_shape(path: str | Path) -> Shape:
    """The model's architecture, head counts, MLP width and layer count."""
    p = Path(path).expanduser()
    if p.is_file():
        meta = gguf_metadata(p)
        arch = meta.get("general.architecture")
        if not isinstance(arch, str):
            raise ShapeError(f"{p} names no general.architecture")
        heads = _positive(meta.get(f"{arch}.attention.head_count"), "attention head count", p)
        return Shape(
            model_type=arch,
            heads=heads,
            kv_heads=_positive(meta.get(f"{arch}.attention.head_count_kv", heads), "KV head count", p),
            intermediate=_positive(meta.get(f"{arch}.feed_forward_length"), "feed_forward_length", p),
            layers=_positive(meta.get(f"{arch}.block_count"), "block_count", p),
        )
    cfg_path = p / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ShapeError(f"cannot read {cfg_path}: {e}") from None
    cfg = {**cfg, **(cfg.get("text_config") or {})}  # multimodal configs nest the language model's
    heads = _positive(cfg.get("num_attention_heads"), "num_attention_heads", cfg_path)
    return Shape(
        model_type=str(cfg.get("model_type", "")),
        heads=heads,
        kv_heads=_positive(cfg.get("num_key_value_heads", heads), "num_key_value_heads", cfg_path),
        intermediate=_positive(cfg.get("intermediate_size"), "intermediate_size", cfg_path),
        layers=_positive(cfg.get("num_hidden_layers"), "num_hidden_layers", cfg_path),
    )
