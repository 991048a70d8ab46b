"""Running a model beyond its trained context: the RoPE scaling that a model's ``context_length``
and ``rope_scaling`` settings ask for, in the form mlx-lm reads from a model's config.json.

A model's trained length is its config's ``max_position_embeddings``. A ``context_length`` above
it, alone, applies YaRN by the ratio (``factor = context_length / trained``, the trained length
as ``original_max_position_embeddings``): of the methods mlx-lm's ``initialize_rope`` knows, YaRN
keeps the short-range positions as trained and stretches only the long wavelengths (llama.cpp's
``--rope-scaling yarn``). The default leaves out YaRN's attention temperature (``mscale: 0``):
mlx-lm's YaRN scales queries and keys by ``0.1 ln(factor) + 1``, meant for models fine-tuned
that way, and on SmolLM2 it turned "The capital of France is Paris." into broken French even on
a short prompt, where without it the answer stays the unscaled one. A table brings it back. ``rope_scaling`` picks the
method by name (``"yarn"``, ``"linear"``, ``"dynamic"``, by the same ratio; ``"none"``: no
scaling) or gives the whole table (``{"type": "yarn", "factor": 4.0, …}``) as config.json would.
A ``context_length`` below the trained length only caps the prompt, with no scaling.

Pure: ``plan`` takes the model's config dict and returns what to pass mlx-lm's ``load`` as
``model_config``; ``worker.model`` loads with it and checks the architecture took it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FALLBACK_CONTEXT = 4096
METHODS = ("yarn", "linear", "dynamic")
DEFAULT_METHOD = "yarn"


class RopeError(ValueError):
    """Settings that can't be applied to this model (a load failure naming the setting)."""


@dataclass(frozen=True)
class Plan:
    context_length: int  # the prompt + output the worker allows
    trained: int  # the model's own max_position_embeddings
    scaling: dict[str, Any] | None  # the rope_scaling table to load with (None: the model's own)

    @property
    def extended(self) -> bool:
        return self.context_length > self.trained

    def describe(self) -> str:
        if self.scaling is None:
            return f"context {self.context_length} tokens"
        kind = self.scaling.get("type") or self.scaling.get("rope_type")
        factor = self.scaling.get("factor")
        return (
            f"context {self.context_length} tokens, beyond its trained {self.trained} "
            f"(rope_scaling {kind}, factor {factor:g})"
            if isinstance(factor, (int, float))
            else f"context {self.context_length} tokens (rope_scaling {kind})"
        )


def trained_length(config: dict[str, Any]) -> int:
    return int(config.get("max_position_embeddings") or config.get("max_seq_len") or FALLBACK_CONTEXT)


def plan(config: dict[str, Any], context_length: int | None, rope_scaling: str | dict[str, Any] | None) -> Plan:
    trained = trained_length(config)
    want = context_length or trained
    own = config.get("rope_scaling")
    if isinstance(rope_scaling, dict):
        kind = rope_scaling.get("type") or rope_scaling.get("rope_type")
        if not isinstance(kind, str):
            raise RopeError("rope_scaling: a table needs type (yarn, linear, dynamic, llama3, longrope …)")
        return Plan(want, trained, dict(rope_scaling))
    if rope_scaling == "none" or (rope_scaling is None and want <= trained):
        return Plan(want, trained, None)
    method = rope_scaling or DEFAULT_METHOD
    if method not in METHODS:
        raise RopeError(f"rope_scaling = {method!r}: use one of {', '.join(METHODS)}, 'none', or a table")
    if want <= trained:
        raise RopeError(
            f"rope_scaling = {method!r} scales by context_length / the trained length ({trained}): "
            f"set context_length above {trained}"
        )
    if own:
        raise RopeError(
            f"the model already scales RoPE ({own}); to run it beyond {trained} tokens give rope_scaling as a "
            "whole table (it replaces the model's own)"
        )
    table: dict[str, Any] = {"type": method, "factor": want / trained}
    if method == "yarn":
        table["original_max_position_embeddings"] = trained
        table["mscale"] = 0  # no attention temperature (see the module docstring)
    return Plan(want, trained, table)
