"""worker.cpu_swiglu against mlx-lm's own SwiGLU: the same values (to float32 rounding) for
decode and prefill shapes and extreme gates; other dtypes go to mlx-lm's."""

from __future__ import annotations

import mlx.core as mx
import pytest

from worker import cpu_swiglu

cpu_swiglu.install()
ORIGINAL = cpu_swiglu._original


@pytest.mark.parametrize("shape", [(1, 1, 1536), (8, 1, 1536), (2, 512, 64), (3, 4, 7)])
def test_same_as_mlx(shape: tuple[int, ...]) -> None:
    gate = mx.random.normal(shape, key=mx.random.key(0)) * 4
    x = mx.random.normal(shape, key=mx.random.key(1))
    assert ORIGINAL is not None
    ours, theirs = cpu_swiglu.swiglu(gate, x), ORIGINAL(gate, x)
    assert ours.shape == theirs.shape and ours.dtype == mx.float32
    assert mx.allclose(ours, theirs, rtol=1e-5, atol=1e-6).item()


def test_extreme_gates_give_no_nan() -> None:
    gate = mx.array([-1000.0, -90.0, 0.0, 90.0, 1000.0])
    out = cpu_swiglu.swiglu(gate, mx.ones(5))
    assert out.tolist() == pytest.approx([0.0, 0.0, 0.0, 90.0, 1000.0], abs=1e-30)


def test_other_dtypes_go_to_mlx(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def spy(gate: mx.array, x: mx.array) -> mx.array:
        calls.append("mlx")
        assert ORIGINAL is not None
        return ORIGINAL(gate, x)

    monkeypatch.setattr(cpu_swiglu, "_original", spy)
    half = mx.ones((2, 8), dtype=mx.float16)
    cpu_swiglu.swiglu(half, half)
    cpu_swiglu.swiglu(mx.ones((2, 8)), mx.ones((2, 8)))
    assert calls == ["mlx"]


def test_installed_in_the_loaded_model_modules() -> None:
    from mlx_lm.models import activations, llama  # imported now, as loading a model imports its module

    cpu_swiglu.install()
    assert llama.swiglu is cpu_swiglu.swiglu
    assert activations.swiglu is ORIGINAL  # its own module keeps the original
