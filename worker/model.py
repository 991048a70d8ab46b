"""Loading a model replica: resolve the path (a GGUF file is imported into the cache once),
then let mlx-lm load weights and tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.nn as nn
from mlx_lm import load as mlx_load

from shared import device as device_rules
from shared.config import ModelConfig
from worker import cpu_attention, device

FALLBACK_CONTEXT = 4096


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any  # mlx_lm TokenizerWrapper
    folder: Path
    context_length: int
    vocab_size: int
    grammar_tokenizer: Any = None  # llguidance's adapter, or why it can't be built (worker.grammar)


def import_dtype(dtype: str) -> str:
    """The dtype to import a GGUF to on this worker's backend (the rule: ``shared.device``)."""
    return device_rules.import_dtype(dtype, device.backend())


def resolve_folder(cfg: ModelConfig) -> Path:
    """The MLX folder for ``cfg.path``: the folder itself, or the cached import of a GGUF file."""
    path = Path(cfg.path).expanduser()
    if path.suffix.lower() == ".gguf" or path.is_file():
        from worker.gguf import cached_import

        return cached_import(path, dtype=import_dtype(cfg.dtype))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path} has no config.json")
    return path


def load_model(cfg: ModelConfig) -> LoadedModel:
    folder = resolve_folder(cfg)
    model, tokenizer, config = mlx_load(str(folder), return_config=True)  # type: ignore[misc]
    cpu_attention.install()  # the model's module is imported now; only on the CPU backend
    ctx = int(config.get("max_position_embeddings") or config.get("max_seq_len") or FALLBACK_CONTEXT)
    vocab = int(config.get("vocab_size") or len(tokenizer))
    return LoadedModel(model, tokenizer, folder, ctx, vocab)
