"""The decode batch's ragged KV cache on a tiny random-weight model: a row with gaps punched in
computes exactly what the same tokens give in a plain cache without gaps, through compaction,
joins, rows leaving, and extraction back to a plain cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load
from mlx_lm.models.cache import KVCache, make_prompt_cache

from worker.ragged_cache import RaggedCache


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Any:
    return load(str(tiny_model))[0]


def plain(model: Any, tokens: list[int]) -> tuple[list[KVCache], mx.array]:
    """A plain cache holding ``tokens`` and the logits after the last of them."""
    cache = make_prompt_cache(model)
    logits = model(mx.array([tokens]), cache=cache)[0, -1]
    mx.eval(logits)
    return cache, logits


def batch(model: Any, rows: list[list[int]]) -> RaggedCache:
    """A ragged batch of ``rows`` (each row's tokens prefilled alone, then joined)."""
    out: RaggedCache | None = None
    for tokens in rows:
        single = RaggedCache.single(plain(model, tokens)[0] if tokens else make_prompt_cache(model))
        if out is None:
            out = single
        else:
            out.extend(single)
    assert out is not None
    return out


def step(model: Any, cache: RaggedCache, inputs: list[list[int]]) -> mx.array:
    """One forward over right-padded ``inputs``: (rows, width, vocab)."""
    width = max(len(x) for x in inputs)
    out = model(mx.array([x + [0] * (width - len(x)) for x in inputs]), cache=cache.layers)
    mx.eval(out)
    return out


def close(a: mx.array, b: mx.array) -> bool:
    return bool(np.allclose(np.array(a), np.array(b), atol=1e-4, rtol=1e-4))


def test_rows_with_punched_gaps_decode_as_without_them(model: Any) -> None:
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    cache = batch(model, rows)
    # a step with drafts: row 0 keeps 3 of its 4 positions, row 1 keeps 1
    step(model, cache, [[20, 21, 22, 23], [30, 31, 32, 33]])
    cache.trim(1)
    cache.punch([0, 2])
    held = [rows[0] + [20, 21, 22], rows[1] + [30]]
    assert cache.offset.tolist() == [len(h) for h in held]
    out = step(model, cache, [[40, 41], [50, 51]])
    for i, (tokens, nxt) in enumerate(zip(held, [[40, 41], [50, 51]], strict=True)):
        want = plain(model, tokens + nxt)[1]
        assert close(out[i, -1], want)
    for i, tokens in enumerate([held[0] + [40, 41], held[1] + [50, 51]]):
        got = cache.extract(i)[0]
        ref = plain(model, tokens)[0][0]
        assert got.offset == len(tokens)
        assert close(got.keys, ref.keys[..., : len(tokens), :])


def test_a_step_masked_on_the_device_after_the_next_one_launched_decodes_as_without_gaps(model: Any) -> None:
    """A chained step (worker.decode): the positions a step rejects are masked from an array
    still computing (``mask_last``) once the next step is already written, and the host counts
    follow later (``forget``): the rows compute what the same tokens give without gaps."""
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    cache = batch(model, rows)
    step(model, cache, [[20, 21, 22, 23], [30, 31, 32, 33]])
    cache.mask_last(4, mx.array([3, 1]))  # row 0 keeps 3 of the 4 positions, row 1 keeps 1
    out = step(model, cache, [[40, 41], [50, 51]])  # launched before the host knew the keeps
    cache.forget([1, 3])
    held = [rows[0] + [20, 21, 22, 40, 41], rows[1] + [30, 50, 51]]
    assert cache.real == [len(h) for h in held] and cache.offset.tolist() == cache.real
    for i, tokens in enumerate(held):
        assert close(out[i, -1], plain(model, tokens)[1])
        got = cache.extract(i)[0]
        assert got.offset == len(tokens)
        assert close(got.keys, plain(model, tokens)[0][0].keys[..., : len(tokens), :])


def test_compaction_keeps_every_row_and_its_next_logits(model: Any) -> None:
    rows = [[3, 4, 5], [6, 7, 8, 9]]
    cache = batch(model, rows)
    held = [list(r) for r in rows]
    for n in range(3):  # row 1 keeps 1 of 8 positions a step, row 0 all of them
        d0, d1 = [60 + n * 8 + j for j in range(8)], [90 + n * 8 + j for j in range(8)]
        step(model, cache, [d0, d1])
        cache.punch([0, 7])
        held[0] += d0
        held[1] += d1[:1]
    cache.compact()
    assert cache.size == max(len(h) for h in held)
    out = step(model, cache, [[70], [71]])
    for i, t in enumerate([70, 71]):
        assert close(out[i, -1], plain(model, held[i] + [t])[1])


def test_gaps_past_a_quarter_of_the_positions_are_compacted_away(model: Any) -> None:
    cache = batch(model, [[1, 2], [3, 4]])
    held = [[1, 2], [3, 4]]
    for n in range(24):  # the rows take turns to keep 1 of their 9 positions
        inputs = [[7 + n] * 9, [8 + n] * 9]
        step(model, cache, inputs)
        gaps = [8, 0] if n % 2 else [0, 8]
        cache.punch(gaps)
        for h, x, g in zip(held, inputs, gaps, strict=True):
            h += x[: 9 - g]
    size, real = cache.size, cache.offset.tolist()
    assert real == [len(h) for h in held] == [122, 122]
    assert size < 2 + 24 * 9  # compacted at least once
    assert size - max(real) < max(64, size // 4)  # and the gaps left are fewer than what compacts
    out = step(model, cache, [[50], [51]])
    for i, t in enumerate([50, 51]):
        assert close(out[i, -1], plain(model, held[i] + [t])[1])


def test_joining_rows_of_other_lengths_and_an_empty_row(model: Any) -> None:
    rows: list[list[int]] = [[5, 6, 7, 8, 9, 10, 11], [], [12, 13]]
    cache = batch(model, rows)
    out = step(model, cache, [[20], [21], [22]])
    for i, (tokens, t) in enumerate(zip(rows, [20, 21, 22], strict=True)):
        assert close(out[i, -1], plain(model, tokens + [t])[1])


def test_rows_leaving_take_their_positions_with_them(model: Any) -> None:
    cache = batch(model, [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10]])
    cache.filter([1])
    assert cache.size == 2
    out = step(model, cache, [[30]])
    assert close(out[0, -1], plain(model, [9, 10, 30])[1])


def test_trim_takes_back_a_step_for_every_row(model: Any) -> None:
    cache = batch(model, [[1, 2, 3], [4, 5]])
    step(model, cache, [[6, 7, 8], [9, 10, 11]])
    cache.trim(3)
    cache.punch([0, 0])
    out = step(model, cache, [[12], [13]])
    assert close(out[0, -1], plain(model, [1, 2, 3, 12])[1])
    assert close(out[1, -1], plain(model, [4, 5, 13])[1])


def test_a_model_that_skips_a_layer_fails_loudly(model: Any) -> None:
    cache = batch(model, [[1, 2, 3]])
    keys = mx.zeros((1, 1, 1, 8))
    with pytest.raises(RuntimeError, match="out of turn"):
        cache.layers[1].update_and_fetch(keys, keys)


def test_rows_joining_together_are_one_batch_as_if_joined_one_by_one(model: Any) -> None:
    rows: list[list[int]] = [[5, 6, 7], [], [8, 9, 10, 11, 12]]
    merged = RaggedCache.merge([plain(model, r)[0] if r else make_prompt_cache(model) for r in rows])
    merged.extend(batch(model, [[13, 14]]))
    assert merged.offset.tolist() == [3, 0, 5, 2] and merged.size == 5
    out = step(model, merged, [[20], [21], [22], [23]])
    for i, (tokens, t) in enumerate(zip([*rows, [13, 14]], [20, 21, 22, 23], strict=True)):
        assert close(out[i, -1], plain(model, tokens + [t])[1])
