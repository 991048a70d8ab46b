"""Configuration of embedding models (``kind``) and of the Ollama listener."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, ModelConfig, ServerConfig, default_embedding_path, load_toml, make_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "hearth.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path_line", ["", 'path = "default"\n'])
def test_an_embedding_model_without_a_path_is_the_packaged_minilm(tmp_path: Path, path_line: str) -> None:
    cfg = load_toml(write(tmp_path, f'[[models]]\nname = "e"\nkind = "embedding"\n{path_line}'))
    (m,) = cfg.models
    assert m.kind == "embedding" and m.path == default_embedding_path() and m.path.endswith("model.zip")


def test_a_chat_model_still_needs_a_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="path"):
        load_toml(write(tmp_path, '[[models]]\nname = "c"\n'))


def test_an_embedding_path_resolves_against_the_config_folder(tmp_path: Path) -> None:
    cfg = load_toml(write(tmp_path, '[[models]]\nname = "e"\nkind = "embedding"\npath = "enc"\n'))
    assert cfg.models[0].path == str((tmp_path / "enc").resolve())


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (ModelConfig(name="x", path="/x", kind="vision"), "kind"),
        (ModelConfig(name="x", path="/x", kind="embedding", defaults={"temperature": 0}), "sampling defaults"),
        (ModelConfig(name="x", path="/x", kind="embedding", tool_parser="json_tools"), "tool_parser"),
        (ModelConfig(name="x", path="/x", kind="embedding", embed_batch=0), "embed_batch"),
        (ModelConfig(name="x", path="/x", kind="embedding", embed_tokens=0), "embed_tokens"),
    ],
)
def test_bad_embedding_settings_are_config_errors(model: ModelConfig, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        make_config(ServerConfig(), [model])


@pytest.mark.parametrize(
    ("server", "words"),
    [
        (ServerConfig(ollama_port=11434), "ollama = true"),
        (ServerConfig(ollama=True, ollama_port=8080), "other than port"),
        (ServerConfig(ollama=True, ollama_port=70000), "ollama_port"),
    ],
)
def test_ollama_port_needs_ollama_and_its_own_port(server: ServerConfig, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        make_config(server, [ModelConfig(name="x", path="/x")])


def test_ollama_settings_load(tmp_path: Path) -> None:
    cfg = load_toml(
        write(tmp_path, '[server]\nollama = true\nollama_port = 11434\n[[models]]\nname = "c"\npath = "/m"\n')
    )
    assert cfg.server.ollama and cfg.server.ollama_port == 11434


def test_an_embedding_models_memory_estimate_is_its_unpacked_weights() -> None:
    from gateway.memory import estimate

    est = estimate(ModelConfig(name="e", path=default_embedding_path(), kind="embedding", replicas=2))
    assert 90_000_000 < est.weights < 92_000_000  # model.safetensors inside the zip, uncompressed
    assert est.per_replica == est.weights and est.total == 2 * est.weights  # no prompt cache counted
    assert "zip" in est.how
