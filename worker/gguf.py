"""Import a llama-family GGUF file into an MLX model folder that ``mlx_lm.load`` opens.

MLX reads GGUF tensors itself (``mx.load``), but mlx-lm wants a Hugging Face style folder:
safetensors with HF names, ``config.json`` and a ``tokenizers`` tokenizer. This module builds
that folder once (atomically) and caches it per user, so a GGUF path can be served directly.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import mlx.core as mx

from shared.config import DTYPES as CONFIG_DTYPES

FORMAT_VERSION = 1  # bump when the folder layout changes: invalidates cached imports
MARKER = ".hearth-import-complete"
SUPPORTED_ARCHITECTURES = frozenset({"llama"})  # mlx-lm's llama model, same tensor layout
DTYPES = tuple(d for d in CONFIG_DTYPES if d != "auto")  # "auto" is resolved before an import
GROUP_SIZE = 32  # every block quant that mx.load keeps quantized (Q4_0, Q4_1, Q8_0) uses 32

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_SUFFIXES = ("weight", "scales", "biases", "bias")
# llama.cpp's pre-tokenizer ids (tokenizer.ggml.pre) -> HF pre-tokenizer recipe. Llama 3's regex
# is the one from Meta's tokenizer.json; smollm splits digits one by one, as llama.cpp does.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZERS = ("gpt2", "gpt-2", "smollm", "llama-bpe", "llama3")


class GGUFImportError(Exception):
    """Clear, user-facing reason (missing file, not GGUF, unsupported arch, unsupported tensor type)."""


def _plain(value: Any) -> Any:
    """Metadata comes back as mx.array scalars/vectors, str, or lists of those: make it JSON-able.

    float32 scalars are rounded to 7 significant digits so 1e-05 stays 1e-05, not 9.99e-06."""
    if isinstance(value, mx.array):
        if value.ndim == 0:
            item = value.item()
            return float(f"{item:.7g}") if value.dtype == mx.float32 else item
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise GGUFImportError(f"GGUF file not found: {path}")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFImportError(f"not a GGUF file: {path}")


def _check_architecture(meta: dict[str, Any], path: Path | str) -> str:
    arch = str(meta.get("general.architecture", "unknown"))
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
        raise GGUFImportError(f"unsupported architecture '{arch}' in {path} (supported: {supported})")
    return arch


def _hf_name(name: str, path: Path) -> str:
    """GGUF tensor name -> HF llama name; unknown tensors fail instead of being dropped silently."""
    base, _, suffix = name.rpartition(".")
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if suffix in _SUFFIXES and m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{suffix}"
    if suffix in _SUFFIXES and base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{suffix}"
    raise GGUFImportError(f"unsupported tensor '{name}' in {path} (not a plain llama model?)")


def _convert_weights(
    tensors: dict[str, mx.array], dtype: str, path: Path
) -> tuple[dict[str, mx.array], dict[str, Any] | None]:
    """Rename tensors, and dequantize them unless dtype is "keep".

    Returns (weights, quantization config or None). mx.load hands Q4_0/Q4_1/Q8_0 back as MLX
    affine triples (uint32 weight + scales + biases); other quant types arrive as float16.
    A file can mix bit widths (Q4_1 files keep token_embd at 8 bits), so "keep" writes
    per-module overrides next to the majority default."""
    weights = {_hf_name(k, path): v for k, v in tensors.items()}
    quantized = {k[: -len(".scales")] for k in weights if k.endswith(".scales")}
    bits = {
        m: weights[f"{m}.weight"].shape[-1] * 32 // (weights[f"{m}.scales"].shape[-1] * GROUP_SIZE) for m in quantized
    }
    if dtype == "keep":
        if not bits:
            return weights, None
        default = Counter(bits.values()).most_common(1)[0][0]
        quant: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": default}
        quant.update({m: {"group_size": GROUP_SIZE, "bits": b} for m, b in bits.items() if b != default})
        return weights, quant
    target = getattr(mx, dtype)
    for m in quantized:
        w, s, b = (weights.pop(f"{m}.{x}") for x in ("weight", "scales", "biases"))
        weights[f"{m}.weight"] = mx.dequantize(w, s, b, group_size=GROUP_SIZE, bits=bits[m])
    return {k: v.astype(target) for k, v in weights.items()}, None


def _build_config(meta: dict[str, Any], weights: dict[str, mx.array], path: Path) -> dict[str, Any]:
    """config.json for mlx-lm's llama model.

    rope_traditional is True because llama.cpp's converter permutes the Q/K rows into the
    interleaved-pair rotary layout; MLX's traditional RoPE rotates exactly those pairs, so
    the tensors load unchanged (no un-permute needed)."""
    a = "llama."
    n_layers = int(meta[a + "block_count"])
    n_heads = int(meta[a + "attention.head_count"])
    hidden = int(meta[a + "embedding_length"])
    head_dim = int(meta.get(a + "attention.key_length", hidden // n_heads))
    if int(meta.get(a + "rope.dimension_count", head_dim)) != head_dim:
        raise GGUFImportError(f"partial rotary embeddings are not supported ({path})")
    for i in range(n_layers):  # a tensor mx.load skipped (exotic type) must not go unnoticed
        for part in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if f"model.layers.{i}.self_attn.{part}.weight" not in weights:
                raise GGUFImportError(f"layer {i} {part} missing in {path} (unsupported tensor type?)")
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": n_layers,
        "intermediate_size": int(meta[a + "feed_forward_length"]),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(meta.get(a + "attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(meta.get(a + "attention.layer_norm_rms_epsilon", 1e-5)),
        "vocab_size": int(weights["model.embed_tokens.weight"].shape[0]),
        "rope_theta": float(meta.get(a + "rope.freq_base", 10000.0)),
        "rope_traditional": True,
        "max_position_embeddings": int(meta.get(a + "context_length", 4096)),
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in weights,
        "mlp_bias": "model.layers.0.mlp.up_proj.bias" in weights,
        "hearth": {"source": path.name, "importer_version": FORMAT_VERSION},
    }
    scaling = str(meta.get(a + "rope.scaling.type", "none"))
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": float(meta[a + "rope.scaling.factor"])}
    elif scaling != "none":
        raise GGUFImportError(f"RoPE scaling '{scaling}' is not supported yet ({path})")
    for key in ("bos_token_id", "eos_token_id"):
        if f"tokenizer.ggml.{key}" in meta:
            config[key] = int(meta[f"tokenizer.ggml.{key}"])
    return config


def _build_tokenizer(meta: dict[str, Any], path: Path) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """A byte-level BPE ``tokenizers.Tokenizer`` from the GGUF vocabulary and merges.

    Returns (tokenizer, tokenizer_config, special_tokens_map). Only the "gpt2" (byte-level
    BPE) tokenizer model is supported; SentencePiece ("llama") vocabularies are not yet."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model", "missing")
    if kind != "gpt2":
        raise GGUFImportError(f"tokenizer type '{kind}' in {path} is not supported yet (only gpt2/BPE)")
    pre = str(meta.get("tokenizer.ggml.pre", "gpt2"))
    if pre not in _PRE_TOKENIZERS:
        raise GGUFImportError(f"pre-tokenizer '{pre}' in {path} is not supported yet")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    llama3 = pre in ("llama-bpe", "llama3")
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=llama3))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not llama3)
    if llama3:
        split = pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False)
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    elif pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    # type 3 = control (special, never split or merged), type 4 = user-defined (added, not special)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    specials = {f"{k}_token": t for k in ("bos", "eos", "unk") if (t := token(k)) is not None}
    if (pad := token("padding")) is not None:
        specials["pad_token"] = pad
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    if add_bos and "bos_token" in specials:  # PreTrainedTokenizerFast ignores add_bos_token itself
        bos = specials["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("llama.context_length", 4096)),
        **specials,
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return tok, config, specials


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def import_gguf(src: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Convert GGUF file src into an MLX model folder out that mlx_lm.load opens.

    dtype "keep" leaves quantized tensors quantized; float dtypes dequantize everything.
    The folder is built in a temp sibling and renamed into place, with a marker written last,
    so a crash never leaves a half folder that looks complete. Returns out."""
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser().absolute()
    if dtype not in DTYPES:
        raise GGUFImportError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    _check_file(src)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GGUFImportError(f"output folder already exists and is not empty: {out}")
    try:
        tensors, raw_meta = mx.load(str(src), return_metadata=True)  # type: ignore[misc]
    except (RuntimeError, ValueError, OSError) as e:
        raise GGUFImportError(f"cannot read tensors from {src} (unsupported tensor type?): {e}") from e
    assert isinstance(tensors, dict) and isinstance(raw_meta, dict)
    meta = {k: _plain(v) for k, v in raw_meta.items()}
    _check_architecture(meta, src)
    tokenizer, tok_config, specials = _build_tokenizer(meta, src)
    weights, quant = _convert_weights(tensors, dtype, src)
    config = _build_config(meta, weights, src)
    if quant:
        config["quantization"] = quant
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the final folder should look like any other
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        _write_json(tmp / "config.json", config)
        tokenizer.save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", tok_config)
        _write_json(tmp / "special_tokens_map.json", specials)
        gen = {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config}
        _write_json(tmp / "generation_config.json", gen)
        (tmp / MARKER).write_text(f"{FORMAT_VERSION}\n")
        if out.is_dir():
            out.rmdir()  # empty (checked above); rename cannot replace a directory otherwise
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def default_cache_dir() -> Path:
    """$HEARTH_CACHE_DIR, else the platform's per-user cache folder + /hearth."""
    if env := os.environ.get("HEARTH_CACHE_DIR"):
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "hearth"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "hearth"


def cached_import(src: str | Path, dtype: str = "float32", cache_dir: str | Path | None = None) -> Path:
    """Import src once into <cache>/models/<stem>-<dtype>-<hash> and reuse it afterwards.

    The hash covers (absolute path, size, mtime_ns, FORMAT_VERSION), so an edited file or a new
    importer re-imports. An flock on a per-folder lock file serialises concurrent importers;
    whoever waits finds the marker and returns immediately."""
    src = Path(src).expanduser().resolve()
    _check_file(src)
    st = src.stat()
    key = f"{src}\0{st.st_size}\0{st.st_mtime_ns}\0{FORMAT_VERSION}".encode()
    models = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    models = models / "models"
    folder = models / f"{src.stem}-{dtype}-{hashlib.sha256(key).hexdigest()[:12]}"
    if (folder / MARKER).is_file():
        return folder
    models.mkdir(parents=True, exist_ok=True)
    with open(models / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / MARKER).is_file():
            return folder
        for stale in models.glob(f".{folder.name}.tmp-*"):  # left by a killed importer
            shutil.rmtree(stale, ignore_errors=True)
        if folder.exists():
            shutil.rmtree(folder)
        return import_gguf(src, folder, dtype)


def main(argv: list[str] | None = None) -> int:
    """``python -m worker.gguf SRC OUT [--dtype D]``: import by hand, print the folder."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.gguf", description="Import a GGUF file into an MLX model folder."
    )
    parser.add_argument("src", help="GGUF file")
    parser.add_argument("out", help="output MLX model folder (must not exist or be empty)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    args = parser.parse_args(argv)
    try:
        print(import_gguf(args.src, args.out, args.dtype))
    except GGUFImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
