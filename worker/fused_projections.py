"""Fewer matmuls a step: the projections of a layer that read the same input run as one.

At the sizes Hearth serves locally, a decode step is bound by how many operations it launches
(per-op dispatch on the CPU, kernel launches on a GPU), not by arithmetic: SmolLM2-135M runs 30
layers, and each projects its normed input three times (``q_proj``, ``k_proj``, ``v_proj``) and
its MLP input twice (``gate_proj``, ``up_proj``). Stacking those weights by rows gives one matmul
whose output columns are the separate projections, so a layer launches three fewer matmuls, and
the wider one runs closer to the BLAS's (or the GPU's) peak than three narrow ones.

The model's own code is left as it is: each projection is replaced by a ``FusedMember`` that,
called with an input the group has not seen, runs the whole group's matmul once and hands the
other members their slices when they are called with that same input (``x is`` the one it ran
on; the model's attention calls ``q_proj(x), k_proj(x), v_proj(x)``). Called with anything else,
a member runs the group's matmul again on it, so the results stay right whatever order or inputs
a model uses. Each output column is the same dot product over the same inputs as before, so the
outputs are those of the separate projections (tests/worker/test_fused_projections.py checks the
logits are equal).

Only plain ``nn.Linear`` and ``nn.QuantizedLinear`` members with the same input width and
quantization are stacked; anything else (a sharded linear of a worker group, a LoRA, an MoE's
switch layers) is left alone.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_KINDS = (nn.Linear, nn.QuantizedLinear)
_SETTINGS = ("group_size", "bits", "mode")


class _Group:
    """The stacked projection and the slices of its last output not yet handed out."""

    def __init__(self, linear: nn.Module, widths: list[int]) -> None:
        self.linear = linear
        self.bounds = [sum(widths[:i]) for i in range(1, len(widths))]
        self.members = len(widths)
        self.x: mx.array | None = None
        self.parts: list[mx.array | None] = []

    def part(self, x: mx.array, index: int) -> mx.array:
        if x is not self.x or self.parts[index] is None:
            self.parts = list(mx.split(self.linear(x), self.bounds, axis=-1))
            self.x = x
        out = self.parts[index]
        self.parts[index] = None
        if all(p is None for p in self.parts):  # every member has its slice: keep no graph alive
            self.x = None
        assert out is not None
        return out


class FusedMember(nn.Module):
    """One projection of a stacked group (its output columns of the group's matmul). The first
    member holds the stacked weights as its child, so the model's parameters count them once."""

    def __init__(self, group: _Group, index: int) -> None:
        super().__init__()
        self._group = group
        self._index = index
        if index == 0:
            self.stacked = group.linear

    def __call__(self, x: mx.array) -> mx.array:
        return self._group.part(x, self._index)


def _stackable(members: list[nn.Module]) -> bool:
    first = members[0]
    if type(first) not in _KINDS or any(type(m) is not type(first) for m in members):
        return False
    if any(set(m.keys()) != set(first.keys()) for m in members):
        return False
    if any(
        m["weight"].shape[1:] != first["weight"].shape[1:] or m["weight"].dtype != first["weight"].dtype
        for m in members
    ):
        return False
    return all(getattr(m, s, None) == getattr(first, s, None) for m in members for s in _SETTINGS)


def _stack(members: list[nn.Module]) -> nn.Module:
    """A linear of the members' kind whose rows are theirs, one after another."""
    first = members[0]
    stacked = type(first).__new__(type(first))
    nn.Module.__init__(stacked)
    stacked.__dict__.update(first.__dict__)  # quantization settings, frozen state
    for key in first.keys():
        stacked[key] = mx.concatenate([m[key] for m in members], axis=0)
    return stacked


def install(model: nn.Module) -> int:
    """Stack every group of projections the model has; returns how many groups were stacked."""
    count = 0
    for _, module in list(model.named_modules()):
        for names in GROUPS:
            members = [module.get(n) if isinstance(module, dict) else None for n in names]
            if any(m is None for m in members) or not _stackable(members):  # type: ignore[arg-type]
                continue
            linear = _stack(members)  # type: ignore[arg-type]
            mx.eval(linear.parameters())
            group = _Group(linear, [m["weight"].shape[0] for m in members])  # type: ignore[index]
            for i, name in enumerate(names):
                module[name] = FusedMember(group, i)
            count += 1
    return count
