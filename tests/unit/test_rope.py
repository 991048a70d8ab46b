"""RoPE scaling for a context beyond the trained length: the plan from the settings (pure), and
that mlx-lm's model really takes it (a tiny model loaded with each method)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ModelConfig
from worker.rope import RopeError, plan

CONFIG = {"model_type": "llama", "max_position_embeddings": 2048}


def test_within_the_trained_length_nothing_is_scaled() -> None:
    assert plan(CONFIG, None, None).scaling is None
    p = plan(CONFIG, 1024, None)
    assert (p.context_length, p.trained, p.scaling, p.extended) == (1024, 2048, None, False)
    assert plan(CONFIG, 8192, "none").scaling is None  # asked for: a longer cap, unscaled


def test_a_longer_context_alone_is_yarn_by_the_ratio() -> None:
    p = plan(CONFIG, 8192, None)
    assert p.scaling == {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048, "mscale": 0}
    assert p.extended and p.context_length == 8192
    assert "beyond its trained 2048" in p.describe() and "yarn" in p.describe()


def test_the_method_by_name_or_a_whole_table() -> None:
    assert plan(CONFIG, 4096, "linear").scaling == {"type": "linear", "factor": 2.0}
    assert plan(CONFIG, 4096, "dynamic").scaling == {"type": "dynamic", "factor": 2.0}
    table = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 2048, "beta_fast": 16}
    assert plan(CONFIG, 16384, table).scaling == table


@pytest.mark.parametrize(
    "config,ctx,scaling,words",
    [
        (CONFIG, 4096, "cubic", "use one of"),
        (CONFIG, 1024, "yarn", "above 2048"),
        ({**CONFIG, "rope_scaling": {"type": "llama3", "factor": 8.0}}, 8192, None, "already scales"),
        (CONFIG, 4096, {"factor": 2.0}, "needs type"),
    ],
)
def test_settings_that_cant_apply_say_why(config: dict, ctx: int, scaling: object, words: str) -> None:
    with pytest.raises(RopeError, match=words):
        plan(config, ctx, scaling)  # type: ignore[arg-type]


def test_the_loaded_model_takes_the_scaling(tmp_path: Path) -> None:
    import mlx.nn as nn
    from mlx_lm.models.rope_utils import YarnRoPE

    from tests.tinymodel import build_tiny_model
    from worker.model import load_model

    folder = build_tiny_model(tmp_path / "m", context=2048)
    yarn = load_model(ModelConfig(name="y", path=str(folder), context_length=8192))
    assert (yarn.context_length, yarn.trained_context) == (8192, 2048)
    rope_y = yarn.model.layers[0].self_attn.rope
    assert isinstance(rope_y, YarnRoPE) and rope_y.mscale == 1.0  # no attention temperature
    linear = load_model(ModelConfig(name="l", path=str(folder), context_length=4096, rope_scaling="linear"))
    rope = linear.model.layers[0].self_attn.rope
    assert isinstance(rope, nn.RoPE) and rope.scale == 0.5
    plain = load_model(ModelConfig(name="p", path=str(folder)))
    assert plain.context_length == 2048 and plain.model.layers[0].self_attn.rope.scale == 1.0


def test_the_config_checks_the_settings(tmp_path: Path) -> None:
    from shared.config import ConfigError, load_toml

    good = tmp_path / "good.toml"
    good.write_text(
        '[[models]]\nname = "m"\npath = "."\ncontext_length = 32768\nrope_scaling = {type = "yarn", factor = 4.0}\n'
    )
    (m,) = load_toml(good).models
    assert m.context_length == 32768 and m.rope_scaling == {"type": "yarn", "factor": 4.0}
    for line, words in (('rope_scaling = "cubic"', "rope_scaling"), ("context_length = 4", "at least"),
                        ('context_length = "long"', "context_length")):  # fmt: skip
        bad = tmp_path / "bad.toml"
        bad.write_text(f'[[models]]\nname = "m"\npath = "."\n{line}\n')
        with pytest.raises(ConfigError, match=words):
            load_toml(bad)
