"""worker.cpu_attention against MLX's own attention: same outputs for every mask it takes,
grouped-query heads and batches; what it does not take goes to MLX's."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from worker import cpu_attention

cpu_attention.install()
ORIGINAL = cpu_attention._original


def _qkv(b: int, hq: int, hkv: int, n: int, s: int, seed: int = 0) -> tuple[mx.array, mx.array, mx.array]:
    mx.random.seed(seed)
    return mx.random.normal((b, hq, n, 64)), mx.random.normal((b, hkv, s, 64)), mx.random.normal((b, hkv, s, 64))


@pytest.mark.parametrize(
    ("b", "hq", "hkv", "n", "s"),
    [(1, 9, 3, 70, 1500), (2, 4, 4, 32, 600), (3, 8, 2, 1, 30000), (8, 9, 3, 1, 300), (1, 9, 3, 1, 5)],
)
@pytest.mark.parametrize("mask", [None, "causal", "bool"])
def test_same_as_mlx(b: int, hq: int, hkv: int, n: int, s: int, mask: str | None) -> None:
    q, k, v = _qkv(b, hq, hkv, n, s)
    m: mx.array | str | None = mask
    if mask == "bool":  # left padding: sequence i ignores its first i * 7 keys
        keep = np.ones((b, 1, n, s), dtype=bool)
        for i in range(b):
            keep[i, :, :, : i * 7] = False
        m = mx.array(keep)
    ours = cpu_attention.scaled_dot_product_attention(q, k, v, None, scale=0.125, mask=m)
    theirs = ORIGINAL(q, k, v, None, scale=0.125, mask=m)  # type: ignore[misc]
    assert ours.shape == theirs.shape
    assert mx.abs(ours - theirs).max().item() < 1e-4


def test_decode_steps_take_numpys_path_and_unhandled_cases_go_to_mlx(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def spy(*args: object, **kwargs: object) -> mx.array:
        calls.append("mlx")
        return ORIGINAL(*args, **kwargs)  # type: ignore[misc]

    monkeypatch.setattr(cpu_attention, "_original", spy)
    q, k, v = _qkv(1, 9, 3, 1, 200)  # a decode step over a short context: NumPy's softmax still pays
    cpu_attention.scaled_dot_product_attention(q, k, v, None, scale=0.125, mask=None)
    assert calls == []
    q, k, v = _qkv(1, 9, 3, 70, 1500)
    additive = mx.zeros((70, 1500))  # an additive float mask: not handled here
    cpu_attention.scaled_dot_product_attention(q, k, v, None, scale=0.125, mask=additive)
    half = [x.astype(mx.float16) for x in (q, k, v)]
    cpu_attention.scaled_dot_product_attention(*half, None, scale=0.125, mask="causal")
    assert calls == ["mlx", "mlx"]


def test_installed_in_the_loaded_model_modules() -> None:
    from mlx_lm.models import llama

    assert llama.scaled_dot_product_attention is cpu_attention.scaled_dot_product_attention
