"""A loaded embedding model: BERT weights, its tokenizer (``tokenizers``, from tokenizer.json)
and the sentence-transformers pipeline its ``modules.json`` describes (Transformer, Pooling,
Normalize): pooling modes from ``1_Pooling/config.json``, the input limit from
``sentence_bert_config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from tokenizers import Tokenizer

from worker.embedding.bert import BertConfig, BertModel
from worker.embedding.package import resolve_folder

POOLING_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens")  # sentence-transformers' order
MODULES = {
    "sentence_transformers.models.Transformer": "transformer",
    "sentence_transformers.models.Pooling": "pooling",
    "sentence_transformers.models.Normalize": "normalize",
}


@dataclass(frozen=True)
class Pipeline:
    """What follows the encoder: which poolings (concatenated in sentence-transformers' order)
    and whether vectors are L2-normalised."""

    pooling: tuple[str, ...]
    normalize: bool

    @classmethod
    def read(cls, folder: Path) -> Pipeline:
        modules_file = folder / "modules.json"
        if not modules_file.is_file():  # a plain BERT folder: mean pooling, no normalisation
            return cls(("mean_tokens",), False)
        kinds: list[str] = []
        pooling: tuple[str, ...] = ()
        for mod in json.loads(modules_file.read_text()):
            kind = MODULES.get(mod.get("type", ""))
            if kind is None:
                raise ValueError(f"{folder}: sentence-transformers module {mod.get('type')!r} is not supported")
            kinds.append(kind)
            if kind == "pooling":
                conf = json.loads((folder / mod["path"] / "config.json").read_text())
                pooling = tuple(m for m in POOLING_MODES if conf.get(f"pooling_mode_{m}"))
                other = [
                    k for k, v in conf.items() if k.startswith("pooling_mode_") and v and k[13:] not in POOLING_MODES
                ]
                if other or not pooling:
                    raise ValueError(f"{folder}: pooling {other or 'none'} is not supported")
        if kinds[:1] != ["transformer"] or "pooling" not in kinds:
            raise ValueError(f"{folder}: modules.json must start with a Transformer and have a Pooling")
        return cls(pooling, "normalize" in kinds)


class EmbeddingModel:
    """Token ids in, one vector per input out."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        config: dict[str, Any] = json.loads((folder / "config.json").read_text())
        self.config = BertConfig.from_dict(config)
        self.bert = BertModel(self.config)
        weights = mx.load(str(folder / "model.safetensors"))
        assert isinstance(weights, dict)
        self.bert.load({k: v.astype(mx.float32) for k, v in weights.items()})
        mx.eval(self.bert.parameters())
        self.pipeline = Pipeline.read(folder)
        st = folder / "sentence_bert_config.json"
        limit = json.loads(st.read_text()).get("max_seq_length") if st.is_file() else None
        self.context_length = int(
            min(limit or self.config.max_position_embeddings, self.config.max_position_embeddings)
        )
        self.dimensions = self.config.hidden_size * len(self.pipeline.pooling)
        self.vocab_size = self.config.vocab_size
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.pad_id = int(config.get("pad_token_id") or 0)

    def tokenize(self, texts: list[str], truncate: bool) -> list[list[int]]:
        """Each text's ids, special tokens included; cut to the limit (keeping the closing
        special token, as sentence-transformers does) when ``truncate``."""
        if truncate:
            self.tokenizer.enable_truncation(self.context_length)
        try:
            return [e.ids for e in self.tokenizer.encode_batch(texts)]
        finally:
            self.tokenizer.no_truncation()

    def encode(self, batch: list[list[int]]) -> np.ndarray:
        """Vectors (float32, one row per sequence) of non-empty token id lists, padded into one
        forward pass."""
        n = max(len(ids) for ids in batch)
        ids = np.full((len(batch), n), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(batch), n), dtype=np.float32)
        for i, seq in enumerate(batch):
            ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1.0
        m = mx.array(mask)
        hidden = self.bert(mx.array(ids), m)
        out = mx.concatenate([_pool(mode, hidden, m) for mode in self.pipeline.pooling], axis=-1)
        if self.pipeline.normalize:
            out = out / mx.maximum(mx.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
        return np.array(out, copy=False)


def _pool(mode: str, hidden: mx.array, mask: mx.array) -> mx.array:
    """sentence-transformers' Pooling over the unpadded tokens."""
    if mode == "cls_token":
        return hidden[:, 0]
    m = mask[:, :, None]
    if mode == "max_tokens":
        return mx.max(mx.where(m > 0, hidden, -1e9), axis=1)
    total = mx.sum(hidden * m, axis=1)
    count = mx.maximum(mx.sum(m, axis=1), 1e-9)
    return total / (mx.sqrt(count) if mode == "mean_sqrt_len_tokens" else count)


def load_embedding_model(path: str) -> EmbeddingModel:
    return EmbeddingModel(resolve_folder(path))
