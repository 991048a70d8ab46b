"""What Ollama's ``/api/tags``, ``/api/show`` and ``/api/ps`` say about a model, read from its
files without loading it (the gateway never imports MLX): architecture, parameter count,
quantization as served, context length, chat template, size, modification time.

Read once per file version (path, size, mtime) and cached. The ``digest`` is a sha256 over the
path, size and mtime, not over the weights (hashing gigabytes per listing would be slow): it is
stable while the file is, and changes when it does.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from gateway.memory import GGUFHeaderError, gguf_parameters, import_dtype_guess
from shared.config import ModelConfig

# llama.cpp's general.file_type values (LLAMA_FTYPE_*), for GGUF weights served as they are
GGUF_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}  # fmt: skip
DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class Facts:
    format: str  # gguf | safetensors
    family: str  # the architecture (llama, bert, ...)
    parameters: int
    quantization: str  # as a worker on this machine serves it: F32, F16, BF16, Q4_1, Q4 ...
    context_length: int  # 0 when the files don't say
    embedding_length: int
    template: str  # the chat template (Jinja), "" for none
    size: int  # bytes on disk
    modified: float  # mtime, seconds since the epoch
    digest: str

    @property
    def parameter_size(self) -> str:
        """Ollama's style: "8.0B", "135M"."""
        n = self.parameters
        if n >= 1e9:
            return f"{n / 1e9:.1f}B"
        if n >= 1e6:
            return f"{n / 1e6:.0f}M"
        return f"{n / 1e3:.0f}K" if n else "unknown"


def facts(cfg: ModelConfig) -> Facts:
    """What the files say; a model whose files can't be read (a path that is missing until its
    workers fail, weights elsewhere for workers started on their own) is listed with unknowns,
    never an error for the whole listing."""
    path = Path(cfg.path).expanduser()
    try:
        st = path.stat()
        return _read(str(path), st.st_size, st.st_mtime, cfg.dtype)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return unknown(str(path))


def unknown(path: str) -> Facts:
    digest = hashlib.sha256(path.encode()).hexdigest()
    return Facts("unknown", "unknown", 0, "unknown", 0, 0, "", 0, 0.0, digest)


@lru_cache(maxsize=64)
def _read(path: str, size: int, mtime: float, dtype: str) -> Facts:
    p = Path(path)
    digest = hashlib.sha256(f"{path}\0{size}\0{mtime}".encode()).hexdigest()
    if p.is_dir():
        return _folder(p, digest, mtime)
    if zipfile.is_zipfile(p):
        return _zip(p, size, digest, mtime)
    meta = gguf_metadata(p)
    arch = str(meta.get("general.architecture", "unknown"))
    try:
        params = gguf_parameters(p)
    except (OSError, GGUFHeaderError):
        params = 0
    served = import_dtype_guess(dtype)
    quant = DTYPE_NAMES.get(served) or GGUF_FILE_TYPES.get(int(meta.get("general.file_type", -1)), "unknown")
    return Facts(
        "gguf",
        arch,
        params,
        quant,
        int(meta.get(f"{arch}.context_length", 0)),
        int(meta.get(f"{arch}.embedding_length", 0)),
        str(meta.get("tokenizer.chat_template", "")),
        size,
        mtime,
        digest,
    )


def gguf_metadata(path: Path) -> dict[str, Any]:
    """A GGUF file's scalar and string metadata (arrays are skipped)."""
    out: dict[str, Any] = {}
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFHeaderError(f"{path} is not a GGUF file")
        (version,) = struct.unpack("<I", f.read(4))
        if version < 2:
            raise GGUFHeaderError(f"{path}: GGUF version {version} is not supported")
        _tensors, kvs = struct.unpack("<QQ", f.read(16))
        for _ in range(kvs):
            key = _string(f)
            (kind,) = struct.unpack("<I", f.read(4))
            value = _value(f, kind)
            if value is not None:
                out[key] = value
    return out


def _string(f: IO[bytes]) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8", "replace")


def _value(f: IO[bytes], kind: int) -> Any:
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind == 8:
        return _string(f)
    if kind == 9:  # array: skipped
        (inner,), (count,) = struct.unpack("<I", f.read(4)), struct.unpack("<Q", f.read(8))
        if inner in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[inner]) * count, 1)
        else:
            for _ in range(count):
                _value(f, inner)
        return None
    raise GGUFHeaderError(f"unknown GGUF metadata type {kind}")


def _safetensors_params(header: dict[str, Any], bits: int | None) -> int:
    """Parameters from a safetensors header: packed quantized weights count 32/bits each;
    quantization scales and biases are not parameters."""
    total = 0
    for name, t in header.items():
        if name == "__metadata__" or name.endswith((".scales", ".biases")) or name.endswith("position_ids"):
            continue
        n = 1
        for d in t["shape"]:
            n *= d
        total += n * (32 // bits if bits and t["dtype"] == "U32" else 1)
    return total


def _header(f: IO[bytes]) -> dict[str, Any]:
    (n,) = struct.unpack("<Q", f.read(8))
    return dict(json.loads(f.read(n)))


def _config_facts(config: dict[str, Any], st_config: dict[str, Any]) -> tuple[str, int, int, str, int | None]:
    quant = config.get("quantization") or {}
    bits = quant.get("bits") if isinstance(quant, dict) else None
    dtype = str(config.get("torch_dtype", "float32"))
    context = int(st_config.get("max_seq_length") or config.get("max_position_embeddings") or 0)
    return (
        str(config.get("model_type", "unknown")),
        context,
        int(config.get("hidden_size", 0)),
        f"Q{bits}" if bits else DTYPE_NAMES.get(dtype, dtype.upper()),
        bits,
    )


def _folder(p: Path, digest: str, mtime: float) -> Facts:
    config = json.loads((p / "config.json").read_text())
    st_file = p / "sentence_bert_config.json"
    st_config = json.loads(st_file.read_text()) if st_file.is_file() else {}
    family, context, width, quant, bits = _config_facts(config, st_config)
    params = size = 0
    for f in sorted(p.glob("*.safetensors")):
        size += f.stat().st_size
        with open(f, "rb") as fh:
            params += _safetensors_params(_header(fh), bits)
    template = ""
    if (p / "chat_template.jinja").is_file():
        template = (p / "chat_template.jinja").read_text()
    elif (p / "tokenizer_config.json").is_file():
        template = str(json.loads((p / "tokenizer_config.json").read_text()).get("chat_template") or "")
    return Facts("safetensors", family, params, quant, context, width, template, size, mtime, digest)


def _zip(p: Path, size: int, digest: str, mtime: float) -> Facts:
    """A zipped sentence-transformers folder (the packaged embedding model)."""
    with zipfile.ZipFile(p) as zf:
        names = set(zf.namelist())
        config = json.loads(zf.read("config.json"))
        st_config = json.loads(zf.read("sentence_bert_config.json")) if "sentence_bert_config.json" in names else {}
        family, context, width, quant, bits = _config_facts(config, st_config)
        params = 0
        for name in sorted(n for n in names if n.endswith(".safetensors")):
            with zf.open(name) as fh:
                params += _safetensors_params(_header(fh), bits)
    return Facts("safetensors", family, params, quant, context, width, "", size, mtime, digest)
