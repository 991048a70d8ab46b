"""The decode batch's KV cache: one layer's keys and values for every row, where a row may skip
positions.

A step with drafts writes ``width`` positions for every row and each row keeps only the ones it
accepted. mlx-lm's ``BatchKVCache`` can only trim all rows alike, so the rows that kept fewer
had to be rolled right into their left padding (``prepare(right_padding)`` + ``finalize``): a
copy of the whole cache on every such step, measured at 0.40 of a whole decode step for 8
SmolLM2 rows on the CPU (``benchmarks/step_costs.py``). Here a row's rejected positions stay
where they are and are masked out instead (``punch``): every row has a validity mask over the
batch's positions, attention skips the invalid ones, and each row's ``offset`` (its RoPE
position, the number of tokens it holds) counts only valid ones, so its keys and values are
exactly those of the same tokens decoded without gaps. Gaps cost memory and a little attention
work; once they are a quarter of the batch's positions, ``compact`` gathers every row's valid
positions together again (one copy for many steps).

It speaks the cache protocol mlx-lm's models use for a batch (``update_and_fetch``,
``make_mask``, an ``offset`` array, ``trim``), and is built from and taken apart into plain
``KVCache``s (``single``, ``extract``), which is what the prompt cache stores. Only plain
``KVCache`` layers can be ragged (``worker.decode.can_verify``)."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache

STEP = 256  # positions are allocated this many at a time, as mlx-lm's caches do
_COMPACT_AT = 64  # the gaps the longest row has before compacting: this many, and a quarter of the positions


class RaggedKVCache:
    """A batch of rows' keys and values over shared positions ``[0, size)``; ``valid[i, p]``
    says whether row ``i`` holds a token at position ``p`` (left padding and punched gaps
    don't). Positions at and past ``size`` are always valid: a step writes them for every row.
    ``keys`` is None while no row holds a token (a one-token prompt joins with none)."""

    def __init__(
        self, keys: mx.array | None, values: mx.array | None, valid: mx.array, size: int, real: list[int]
    ) -> None:
        self.keys, self.values, self.valid = keys, values, valid  # capacity on axis 2 (keys, values) and 1 (valid)
        self._size = size
        self._real = real  # per row: the tokens it holds (host copy of ``offset``)
        self.offset = mx.array(real, dtype=mx.int32)

    # -- building and taking apart -------------------------------------------------------------

    @classmethod
    def single(cls, cache: KVCache) -> RaggedKVCache:
        """One row holding ``cache``'s tokens."""
        n = int(cache.offset)
        if cache.keys is None or n == 0:
            return cls(None, None, mx.zeros((1, 0), dtype=mx.bool_), 0, [0])
        keys, values = cache.keys[..., :n, :], cache.values[..., :n, :]
        return cls(keys, values, mx.ones((1, n), dtype=mx.bool_), n, [n])

    def extract(self, index: int) -> KVCache:
        """Row ``index``'s tokens, in order and without gaps, as a plain cache."""
        out = KVCache()
        if self.keys is None or self.values is None or not self._real[index]:
            return out
        kept = np.flatnonzero(np.array(self.valid[index, : self._size]))
        at = mx.array(kept.astype(np.int32))
        out.keys = mx.contiguous(self.keys[index : index + 1, :, at, :])
        out.values = mx.contiguous(self.values[index : index + 1, :, at, :])
        out.offset = len(kept)
        return out

    def extend(self, other: RaggedKVCache) -> None:
        """Append ``other``'s rows: both end at the same position, the shorter one padded on
        its left with invalid positions (as ``BatchKVCache.extend`` does)."""
        like = self if self.keys is not None else other
        if like.keys is not None:
            size = max(self._size, other._size)
            cap = max(self.capacity, other.capacity)
            parts = [c._aligned(size, cap, like) for c in (self, other)]
            self.keys = mx.concatenate([p[0] for p in parts])
            self.values = mx.concatenate([p[1] for p in parts])
            self.valid = mx.concatenate([p[2] for p in parts])
            self._size = size
        else:
            self.valid = mx.concatenate([self.valid, other.valid])
        self._real = self._real + other._real
        self.offset = mx.concatenate([self.offset, other.offset])

    def _aligned(self, size: int, cap: int, like: RaggedKVCache) -> tuple[mx.array, mx.array, mx.array]:
        """Our rows over ``cap`` positions, ending at ``size`` (left-padded with invalid ones)."""
        assert like.keys is not None and like.values is not None
        rows = len(self._real)
        if self.keys is None or self.values is None:
            b, h, _, dk = like.keys.shape
            keys = mx.zeros((rows, h, cap, dk), dtype=like.keys.dtype)
            values = mx.zeros((rows, h, cap, like.values.shape[3]), dtype=like.values.dtype)
            valid = mx.arange(cap)[None] >= size
            return keys, values, mx.broadcast_to(valid, (rows, cap))
        left = size - self._size
        right = cap - self.capacity - left
        keys, values, valid = self.keys, self.values, self.valid
        if right < 0:  # room past our size that the other rows don't have: cut it
            keys, values, valid = keys[..., :right, :], values[..., :right, :], valid[:, :right]
            right = 0
        if left or right:
            pad = [(0, 0), (0, 0), (left, right), (0, 0)]
            keys, values = mx.pad(keys, pad), mx.pad(values, pad)
            parts = [mx.zeros((rows, left), dtype=mx.bool_), valid, mx.ones((rows, right), dtype=mx.bool_)]
            valid = mx.concatenate(parts, axis=1)
        return keys, values, valid

    def filter(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (in that order)."""
        at = mx.array(keep, dtype=mx.int32)
        if self.keys is not None and self.values is not None:
            self.keys, self.values = self.keys[at], self.values[at]
        self.valid = self.valid[at]
        self.offset = self.offset[at]
        self._real = [self._real[i] for i in keep]
        self._shrink()

    # -- the model's side -------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[2])

    def size(self) -> int:
        return self._size

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        n = keys.shape[2]
        if self._size + n > self.capacity:
            grow = ((self._size + n - self.capacity + STEP - 1) // STEP) * STEP
            b, h, _, dk = keys.shape
            more_k = mx.zeros((b, h, grow, dk), dtype=keys.dtype)
            more_v = mx.zeros((b, h, grow, values.shape[3]), dtype=values.dtype)
            if self.keys is None or self.values is None:
                self.keys, self.values = more_k, more_v
            else:
                self.keys = mx.concatenate([self.keys, more_k], axis=2)
                self.values = mx.concatenate([self.values, more_v], axis=2)
            self.valid = mx.concatenate([self.valid, mx.ones((b, grow), dtype=mx.bool_)], axis=1)
        assert self.keys is not None and self.values is not None
        start = self._size
        self._size += n
        self._real = [r + n for r in self._real]
        self.offset = self.offset + n
        self.keys[..., start : self._size, :] = keys
        self.values[..., start : self._size, :] = values
        return self.keys[..., : self._size, :], self.values[..., : self._size, :]

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None, **_: Any) -> mx.array:
        """Which keys each of the ``n`` new queries sees: its row's valid positions, causally.
        The new positions count as valid for every row: a shorter row's right padding comes
        after its real positions, which causality keeps its real queries from seeing."""
        end = self._size + n
        if end <= self.capacity:
            seen = self.valid[:, :end]  # positions from ``size`` on are valid
        else:
            seen = mx.concatenate([self.valid[:, : self._size], mx.ones((len(self._real), n), dtype=mx.bool_)], axis=1)
        mask = seen[:, None, None, :]
        if n > 1 or window_size is not None:
            q = mx.arange(self._size, end)[:, None]
            k = mx.arange(end)[None]
            causal = q >= k
            if window_size is not None:
                causal = causal & (q < k + window_size)
            mask = mask & causal[None, None]
        return mask

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        """Take back the last ``n`` positions of every row."""
        n = min(self._size, n)
        if n:
            self._size -= n
            self._real = [r - n for r in self._real]
            self.offset = self.offset - n
            self.valid[:, self._size : self._size + n] = True  # as if never written
        return n

    def punch(self, gaps: list[int]) -> None:
        """Row ``i`` drops its last ``gaps[i]`` positions (drafts it rejected) while the others
        keep theirs: they become invalid, and the row's next token goes at the batch's next
        position with its own token count as its RoPE position."""
        most = max(gaps)
        if most <= 0:
            return
        first = self._size - most
        keep = mx.arange(most)[None] < mx.array([most - g for g in gaps], dtype=mx.int32)[:, None]
        self.valid[:, first : self._size] = self.valid[:, first : self._size] & keep
        self._real = [r - g for r, g in zip(self._real, gaps, strict=True)]
        self.offset = self.offset - mx.array(gaps, dtype=mx.int32)
        if self._size - max(self._real) >= max(_COMPACT_AT, self._size // 4):
            self.compact()

    def compact(self) -> None:
        """Gather each row's valid positions to the right end of ``max(real)`` positions, the
        rest invalid left padding: one copy of the cache, after which there are no gaps."""
        if self.keys is None or self.values is None:
            return
        size = max(self._real)
        held = np.array(self.valid[:, : self._size])
        index = np.zeros((len(self._real), size), dtype=np.int32)
        for i, r in enumerate(self._real):
            index[i, size - r :] = np.flatnonzero(held[i])
        at = mx.array(index)[:, None, :, None]
        self.keys = mx.take_along_axis(self.keys[..., : self._size, :], at, axis=2)
        self.values = mx.take_along_axis(self.values[..., : self._size, :], at, axis=2)
        self.valid = mx.arange(size)[None] >= mx.array([size - r for r in self._real], dtype=mx.int32)[:, None]
        self._size = size

    def _shrink(self) -> None:
        """Drop leading positions no row holds (rows that left took their tokens with them)."""
        if self.keys is None or self.values is None or not self._real or self._size == 0:
            return
        lead = int(np.argmax(np.array(mx.any(self.valid[:, : self._size], axis=0))))
        if lead > 0:
            self.keys, self.values = self.keys[..., lead:, :], self.values[..., lead:, :]
            self.valid = self.valid[:, lead:]
            self._size -= lead

    @property
    def state(self) -> tuple[Any, ...]:
        return self.keys, self.values, self.valid, self.offset

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None or self.values is None else int(self.keys.nbytes + self.values.nbytes)
