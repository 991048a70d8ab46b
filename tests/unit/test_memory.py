"""gateway.memory: a model's memory estimate from its files, without MLX in the gateway."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.memory import GGUFHeaderError, estimate, gguf_parameters, import_dtype_guess
from shared.config import ModelConfig


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A GGUF written by MLX with metadata of every shape (strings, arrays of strings and numbers)."""
    import mlx.core as mx

    arrays = {
        "token_embd.weight": mx.zeros((50, 16)),
        "blk.0.attn_q.weight": mx.ones((16, 16), dtype=mx.float16),
        "output_norm.weight": mx.zeros((16,)),
    }
    meta = {
        "general.architecture": "llama",
        "tokenizer.ggml.tokens": [f"tok{i}" for i in range(300)],
        "llama.block_count": mx.array(1, dtype=mx.uint32),
        "tokenizer.ggml.token_type": mx.arange(300, dtype=mx.int32),
    }
    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    mx.save_gguf(str(path), arrays, meta)
    return path, sum(a.size for a in arrays.values())


def test_gguf_parameters_come_from_the_tensor_shapes_in_the_header(gguf: tuple[Path, int]) -> None:
    path, params = gguf
    assert gguf_parameters(path) == params


def test_gguf_estimate_is_parameters_times_the_import_dtype_plus_cache_times_replicas(gguf: tuple[Path, int]) -> None:
    path, params = gguf
    m = ModelConfig(name="g", path=str(path), dtype="float32", replicas=3, prompt_cache_bytes=1000)
    est = estimate(m)
    assert est.weights == params * 4 and est.per_replica == params * 4 + 1000 and est.total == 3 * est.per_replica
    assert estimate(dataclasses.replace(m, dtype="bfloat16")).weights == params * 2
    assert estimate(dataclasses.replace(m, dtype="keep")).weights == path.stat().st_size


def test_auto_is_float32_off_apple_silicon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.system", lambda: "Linux")
    assert import_dtype_guess("auto") == "float32"
    monkeypatch.setattr("platform.system", lambda: "Darwin")
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    assert import_dtype_guess("auto") == "keep" and import_dtype_guess("float16") == "float16"


def test_mlx_folder_estimate_is_its_safetensors_files(tiny_model: Path) -> None:
    weights = sum(f.stat().st_size for f in tiny_model.glob("*.safetensors"))
    est = estimate(ModelConfig(name="t", path=str(tiny_model), prompt_cache_bytes=0))
    assert weights > 0 and est.weights == est.total == weights


def test_not_a_gguf_and_no_local_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope" * 10)
    with pytest.raises(GGUFHeaderError):
        gguf_parameters(bad)
    assert estimate(ModelConfig(name="b", path=str(bad), dtype="float32")).weights == bad.stat().st_size
    hub = estimate(ModelConfig(name="h", path="org/some-model-on-the-hub", prompt_cache_bytes=7))
    assert hub.weights == 0 and hub.total == 7 and "unknown" in hub.how
