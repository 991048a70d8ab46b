"""A BERT encoder in MLX, with the module names of Hugging Face's ``BertModel`` so a
sentence-transformers ``model.safetensors`` loads as it is.

Hearth's own (about 100 lines) rather than mlx-embeddings: that package imports mlx-vlm at import
time, which pulls in datasets, OpenCV, mlx-audio, FastAPI and more (see docs/architecture.md).
Only what encoding needs is here: no pooler head, no dropout, absolute positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        if d.get("model_type", "bert") != "bert":
            raise ValueError(f"model_type {d.get('model_type')!r} is not bert")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type {d['position_embedding_type']!r} is not supported")
        if d.get("hidden_act", "gelu") not in ACTIVATIONS:
            raise ValueError(f"hidden_act {d['hidden_act']!r} is not supported")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


ACTIVATIONS = {"gelu": nn.gelu, "gelu_new": nn.gelu_approx, "gelu_pytorch_tanh": nn.gelu_approx, "relu": nn.relu}


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def __call__(self, ids: mx.array) -> mx.array:
        positions = mx.arange(ids.shape[1])
        x = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)


class _Dense(nn.Module):
    """``dense`` (+ ``LayerNorm`` over the residual, when ``norm``): BERT's output blocks."""

    def __init__(self, n_in: int, n_out: int, eps: float | None) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(n_out, eps=eps)


class _Attention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Dense(c.hidden_size, c.hidden_size, c.layer_norm_eps)
        self.heads = c.num_attention_heads

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        b, n, d = x.shape
        h = self.heads

        def split(t: mx.array) -> mx.array:
            return t.reshape(b, n, h, d // h).transpose(0, 2, 1, 3)

        q, k, v = split(self.self.query(x)), split(self.self.key(x)), split(self.self.value(x))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=(d // h) ** -0.5, mask=mask)
        out = out.transpose(0, 2, 1, 3).reshape(b, n, d)
        return self.output.LayerNorm(x + self.output.dense(out))


class _Layer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Dense(c.hidden_size, c.intermediate_size, None)
        self.output = _Dense(c.intermediate_size, c.hidden_size, c.layer_norm_eps)
        self.act = ACTIVATIONS[c.hidden_act]

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        h = self.attention(x, mask)
        return self.output.LayerNorm(h + self.output.dense(self.act(self.intermediate.dense(h))))


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = [_Layer(c) for _ in range(c.num_hidden_layers)]


class BertModel(nn.Module):
    """Token ids (batch, length) and a 0/1 attention mask of the same shape -> the last hidden
    states (batch, length, hidden). Padded positions are masked out of attention."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.config = c
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)

    def __call__(self, ids: mx.array, mask: mx.array) -> mx.array:
        x = self.embeddings(ids)
        dtype = x.dtype
        additive = mx.where(mask[:, None, None, :].astype(mx.bool_), 0.0, -1e9).astype(dtype)
        for layer in self.encoder.layer:
            x = layer(x, additive)
        return x

    def load(self, weights: dict[str, mx.array]) -> None:
        """Hugging Face's tensor names, ``bert.`` prefix or not; the pooler head and the
        ``position_ids`` buffer are not used."""
        kept = []
        for name, w in weights.items():
            name = name.removeprefix("bert.")
            if name.startswith(("pooler.", "cls.")) or name.endswith("position_ids"):
                continue
            kept.append((name, w))
        self.load_weights(kept, strict=True)
