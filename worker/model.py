"""Loading a model replica: resolve the path (a GGUF file is imported into the cache once),
then let mlx-lm load weights and tokenizer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.nn as nn
from mlx_lm import load as mlx_load
from mlx_lm.utils import load_config

from shared import device as device_rules
from shared.config import ModelConfig
from worker import cpu_attention, cpu_swiglu, device, fused_projections, rope

log = logging.getLogger("hearth.worker")


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any  # mlx_lm TokenizerWrapper
    folder: Path
    context_length: int
    vocab_size: int
    grammar_tokenizer: Any = None  # llguidance's adapter, or why it can't be built (worker.grammar)
    trained_context: int = 0  # the model's own max_position_embeddings


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


def prepare(model: nn.Module, sharded: bool = False) -> int:
    """What the worker changes in a loaded mlx-lm model, by backend (``shared.device``): NumPy's
    softmax and SwiGLU on the CPU, stacked projections on a GPU (not for a worker group's sharded
    layers). Benchmarks call it too, to time what the worker runs. Returns the groups stacked."""
    cpu_attention.install()  # the model's module is imported now; only on the CPU backend
    cpu_swiglu.install()
    if sharded or not device_rules.fused_projections(device.backend()):
        return 0
    return fused_projections.install(model)


def load_model(cfg: ModelConfig) -> LoadedModel:
    folder = resolve_folder(cfg)
    plan = rope.plan(load_config(folder), cfg.context_length, cfg.rope_scaling)
    override = {"rope_scaling": plan.scaling} if plan.scaling is not None else None
    lazy = cfg.distributed is not None  # a group's rank reads only its own part of the weights
    model, tokenizer, config = mlx_load(str(folder), model_config=override, lazy=lazy, return_config=True)  # type: ignore[misc]
    if cfg.distributed is not None:
        from worker.group import shard

        shard(model, cfg.distributed)
    if plan.scaling is not None and getattr(getattr(model, "args", None), "rope_scaling", None) != plan.scaling:
        raise rope.RopeError(
            f"rope_scaling: mlx-lm's {config.get('model_type')} model does not take rope_scaling, so it can't run "
            f"beyond its trained {plan.trained} tokens"
        )
    stacked = prepare(model, sharded=cfg.distributed is not None)
    if stacked:
        log.info("%s: %d projection groups stacked", cfg.name, stacked)
    (log.warning if plan.extended else log.info)("%s: %s", cfg.name, plan.describe())
    vocab = int(config.get("vocab_size") or len(tokenizer))
    return LoadedModel(model, tokenizer, folder, plan.context_length, vocab, trained_context=plan.trained)
