"""The embedding model and its worker core in-process: the MLX BERT encoder against a NumPy
forward pass of the same weights written here independently, semantic sanity, and the core's
batching, limits and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.config import ModelConfig, default_embedding_path
from shared.protocol import ERROR_BAD_REQUEST, ERROR_CONTEXT_LENGTH, Embed, Embeddings, Error, Generate

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply after the announcement.",
    "Shares dropped steeply when the news came out.",
    "Ein Satz auf Deutsch, mit Umlauten: Köln, Übung.",
    "x",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.embedding.package import resolve_folder

    return resolve_folder(default_embedding_path(), cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def model(folder: Path) -> Any:
    from worker.embedding.model import EmbeddingModel

    return EmbeddingModel(folder)


def numpy_reference(folder: Path, ids: list[int]) -> np.ndarray:
    """BERT + mean pooling + L2 normalisation for one unpadded sequence, in float64 NumPy,
    straight from the safetensors tensors and config.json."""
    import mlx.core as mx

    raw = mx.load(str(folder / "model.safetensors"))
    assert isinstance(raw, dict)
    w = {k: np.array(v.astype(mx.float32), dtype=np.float64) for k, v in raw.items() if "position_ids" not in k}
    cfg = json.loads((folder / "config.json").read_text())
    heads, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]

    def norm(x: np.ndarray, p: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def dense(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    from math import erf

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
    n = len(ids)
    e = "embeddings."
    x = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][:n]
    x = norm(x + w[e + "token_type_embeddings.weight"][0], e + "LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        d = x.shape[-1] // heads
        q, k, v = (
            dense(x, p + f"attention.self.{m}").reshape(n, heads, d).transpose(1, 0, 2)
            for m in ("query", "key", "value")
        )
        s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(n, -1)
        h = norm(x + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        x = norm(h + dense(gelu(dense(h, p + "intermediate.dense")), p + "output.dense"), p + "output.LayerNorm")
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def test_pipeline_follows_the_sentence_transformers_config(model: Any) -> None:
    assert model.pipeline.pooling == ("mean_tokens",)
    assert model.pipeline.normalize
    assert model.context_length == 256  # sentence_bert_config.json's max_seq_length
    assert model.dimensions == 384


def test_vectors_agree_with_a_numpy_forward_pass(model: Any, folder: Path) -> None:
    ids = model.tokenize(SENTENCES, truncate=False)
    vectors = model.encode(ids)  # one padded batch: padding must not change any vector
    for seq, vec in zip(ids, vectors):
        ref = numpy_reference(folder, seq)
        cos = float(vec @ ref / np.linalg.norm(vec))
        assert cos > 1 - 1e-4, (seq, cos)
        assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4


def test_close_sentences_score_higher_than_unrelated_ones(model: Any) -> None:
    v = model.encode(model.tokenize(SENTENCES[:4], truncate=False))
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3
    assert sim[2, 3] > sim[2, 0] + 0.3 and sim[2, 3] > sim[2, 1] + 0.3


def test_tokenizer_adds_specials_and_truncates_keeping_the_end_token(model: Any) -> None:
    ids = model.tokenize(["hello world"], truncate=False)[0]
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
    long = " ".join(["word"] * 400)
    assert len(model.tokenize([long], truncate=False)[0]) == 402
    cut = model.tokenize([long], truncate=True)[0]
    assert len(cut) == 256 and cut[-1] == 102
    assert len(model.tokenize([long], truncate=False)[0]) == 402  # truncation does not stick


@pytest.fixture(scope="module")
def core(model: Any) -> Any:
    from worker.embedding.core import EmbeddingCore

    return EmbeddingCore(model, ModelConfig(name="minilm", path="unused", kind="embedding", embed_batch=4))


def run(core: Any, *reqs: Embed) -> dict[str, Any]:
    out = {}
    for r in reqs:
        for ev in core.embed(r):
            out[ev.id] = ev
    steps = 0
    while core.has_work:
        steps += 1
        for ev in core.step():
            out[ev.id] = ev
    out["steps"] = steps
    return out


def test_core_batches_inputs_across_requests_in_order(core: Any, model: Any) -> None:
    a = Embed("a", "minilm", SENTENCES[:3])
    b = Embed("b", "minilm", SENTENCES[3:])
    out = run(core, a, b)
    assert out["steps"] == 2  # 6 inputs, 4 per forward pass
    alone = model.encode(model.tokenize(SENTENCES, truncate=False))
    got = np.array(out["a"].vectors + out["b"].vectors)
    assert np.allclose(got, alone, atol=1e-5)
    assert out["a"].usage["prompt_tokens"] == sum(len(s) for s in model.tokenize(SENTENCES[:3], truncate=False))


def test_token_id_inputs_embed_like_the_text(core: Any, model: Any) -> None:
    ids = model.tokenize(["The cat sits on the mat."], truncate=False)[0]
    out = run(core, Embed("t", "minilm", [ids]), Embed("s", "minilm", ["The cat sits on the mat."]))
    assert np.allclose(out["t"].vectors[0], out["s"].vectors[0], atol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "params", "code", "param", "words"),
    [
        ([" ".join(["word"] * 300)], {}, ERROR_CONTEXT_LENGTH, "input", "at most 256 tokens"),
        ([[101] * 300], {}, ERROR_CONTEXT_LENGTH, "input", "at most 256 tokens"),
        (["ok", [5, 40000]], {}, ERROR_BAD_REQUEST, "input", "outside the vocabulary"),
        ([[]], {}, ERROR_BAD_REQUEST, "input", "empty"),
        (["ok"], {"dimensions": 128}, ERROR_BAD_REQUEST, "dimensions", "384-dimensional"),
    ],
)
def test_core_refuses_what_it_cannot_embed(
    core: Any, inputs: list[Any], params: dict[str, Any], code: str, param: str, words: str
) -> None:
    (ev,) = core.embed(Embed("bad", "minilm", inputs, params))
    assert isinstance(ev, Error) and ev.code == code and ev.param == param and words in ev.message
    assert not core.has_work


def test_core_truncates_when_asked(core: Any) -> None:
    out = run(core, Embed("long", "minilm", [" ".join(["word"] * 300), [101] * 300], {"truncate": True}))
    assert isinstance(out["long"], Embeddings) and out["long"].usage["prompt_tokens"] == 512


def test_core_refuses_generation_and_cancels(core: Any) -> None:
    (ev,) = core.add(Generate("g", "minilm", {"prompt": "hi"}, {}))
    assert isinstance(ev, Error) and ev.param == "model" and "embedding model" in ev.message
    core.embed(Embed("c", "minilm", SENTENCES))
    core.cancel("c")
    assert not core.has_work and core.step() == []


def test_a_step_keeps_to_the_token_budget(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.embedding.core import EmbeddingCore

    cfg = ModelConfig(name="minilm", path="unused", kind="embedding", embed_batch=32, embed_tokens=30)
    core = EmbeddingCore(model, cfg)

    def seq(n: int) -> list[int]:
        return [101] + [2003] * (n - 2) + [102]

    sizes = []
    real = model.encode

    def spy(batch: list[list[int]]) -> Any:
        sizes.append((len(batch), max(map(len, batch))))
        return real(batch)

    monkeypatch.setattr(model, "encode", spy)  # the real encoder, with the batch shapes noted
    core.embed(Embed("a", "minilm", [seq(10), seq(10), seq(10), seq(40), seq(10)]))
    while core.has_work:
        done = core.step()
    assert sizes == [(3, 10), (1, 40), (1, 10)]  # 3 x 10 fits 30; 40 alone (one at least); then the last
    assert isinstance(done[0], Embeddings) and len(done[0].vectors) == 5
