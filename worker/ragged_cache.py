"""The decode batch's KV cache: every layer's keys and values for every row, over one set of
positions where a row may skip some.

A step with drafts writes ``width`` positions for every row and each row keeps only the ones it
accepted. mlx-lm's ``BatchKVCache`` can only trim all rows alike, so the rows that kept fewer
had to be rolled right into their left padding (``prepare(right_padding)`` + ``finalize``): a
copy of the whole cache on every such step, measured at 0.40 of a whole decode step for 8
SmolLM2 rows on the CPU. Here a row's rejected positions stay where they are and are masked
out instead (``punch``): every row has a validity mask over the batch's positions, attention
skips the invalid ones, and each row's ``offset`` (its RoPE position, the number of tokens it
holds) counts only valid ones, so its keys and values are exactly those of the same tokens
decoded without gaps. Gaps cost memory and a little attention work; once the longest row's
gaps reach a quarter of the positions, ``compact`` gathers every row's valid positions together
again (one copy for many steps).

The positions, the mask and the offsets are the batch's, shared by its layers: a step updates
them once, not once per layer (on a GPU each small update is a kernel launch). The layers
(``RaggedCache.layers``, what the model is called with) speak the cache protocol mlx-lm's
models use for a batch (``update_and_fetch``, ``make_mask``, an ``offset`` array); the last
layer's update moves the batch on. The batch is built from and taken apart into plain
``KVCache``s (``single``, ``extract``), which is what the prompt cache stores. Only models whose
every layer has a plain ``KVCache`` can be ragged (``worker.decode.can_verify``)."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache

STEP = 256  # positions are allocated this many at a time, as mlx-lm's caches do
_COMPACT_AT = 64  # the gaps the longest row has before compacting: this many, and a quarter of the positions


class RaggedLayer:
    """One layer's keys and values for the batch's rows (capacity on axis 2), in the batch's
    positions. ``keys`` is None while no row holds a token (a one-token prompt joins with none)."""

    def __init__(self, batch: RaggedCache, index: int, keys: mx.array | None, values: mx.array | None) -> None:
        self.batch, self.index = batch, index
        self.keys, self.values = keys, values

    @property
    def offset(self) -> mx.array:
        return self.batch.offset

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[2])

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None, **_: Any) -> mx.array:
        return self.batch.mask(n, window_size)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        n = keys.shape[2]
        start = self.batch.turn(self.index)
        end = start + n
        if end > self.capacity:
            grow = ((end - self.capacity + STEP - 1) // STEP) * STEP
            b, h, _, dk = keys.shape
            more_k = mx.zeros((b, h, grow, dk), dtype=keys.dtype)
            more_v = mx.zeros((b, h, grow, values.shape[3]), dtype=values.dtype)
            if self.keys is None or self.values is None:
                self.keys, self.values = more_k, more_v
            else:
                self.keys = mx.concatenate([self.keys, more_k], axis=2)
                self.values = mx.concatenate([self.values, more_v], axis=2)
        assert self.keys is not None and self.values is not None
        self.keys[..., start:end, :] = keys
        self.values[..., start:end, :] = values
        self.batch.updated(self.index, n)
        return self.keys[..., :end, :], self.values[..., :end, :]


class RaggedCache:
    """A batch of rows over shared positions ``[0, size)``; ``valid[i, p]`` says whether row
    ``i`` holds a token at position ``p`` (left padding and punched gaps don't). Positions at
    and past ``size`` are always valid: a step writes them for every row."""

    def __init__(self, depth: int, rows: int) -> None:
        self.layers = [RaggedLayer(self, i, None, None) for i in range(depth)]
        self.valid = mx.zeros((rows, 0), dtype=mx.bool_)  # capacity on axis 1, its own
        self.size = 0
        self.real = [0] * rows  # per row: the tokens it holds (host copy of ``offset``)
        self.offset = mx.zeros((rows,), dtype=mx.int32)
        self._next = 0  # the layer whose update comes next in a forward pass

    # -- building and taking apart -------------------------------------------------------------

    @classmethod
    def single(cls, caches: list[KVCache]) -> RaggedCache:
        """One row holding ``caches``' tokens (one plain cache per layer)."""
        return cls.merge([caches])

    @classmethod
    def merge(cls, rows: list[list[KVCache]]) -> RaggedCache:
        """A batch of ``rows``, each one plain cache per layer, right-aligned: one copy of
        each, however many join at once (joining them one by one would copy the batch each
        time)."""
        lengths = [int(c[0].offset) if c and c[0].keys is not None else 0 for c in rows]
        out = cls(len(rows[0]), len(rows))
        size = max(lengths)
        if not size:
            return out
        like = rows[lengths.index(size)]
        for i, layer in enumerate(out.layers):
            _, h, _, dk = like[i].keys.shape
            dv = like[i].values.shape[3]
            keys = mx.zeros((len(rows), h, size, dk), dtype=like[i].keys.dtype)
            values = mx.zeros((len(rows), h, size, dv), dtype=like[i].values.dtype)
            for j, (c, n) in enumerate(zip(rows, lengths, strict=True)):
                if n:
                    keys[j : j + 1, :, size - n :] = c[i].keys[..., :n, :]
                    values[j : j + 1, :, size - n :] = c[i].values[..., :n, :]
            layer.keys, layer.values = keys, values
        out.valid = mx.arange(size)[None] >= mx.array([size - n for n in lengths], dtype=mx.int32)[:, None]
        out.size, out.real = size, lengths
        out.offset = mx.array(lengths, dtype=mx.int32)
        return out

    def extract(self, index: int) -> list[KVCache]:
        """Row ``index``'s tokens, in order and without gaps, one plain cache per layer."""
        out = [KVCache() for _ in self.layers]
        if not self.real[index]:
            return out
        kept = np.flatnonzero(np.array(self.valid[index, : self.size]))
        at = mx.array(kept.astype(np.int32))
        for c, layer in zip(out, self.layers, strict=True):
            assert layer.keys is not None and layer.values is not None
            c.keys = mx.contiguous(layer.keys[index : index + 1, :, at, :])
            c.values = mx.contiguous(layer.values[index : index + 1, :, at, :])
            c.offset = len(kept)
        return out

    def extend(self, other: RaggedCache) -> None:
        """Append ``other``'s rows: both end at the same position, the shorter one padded on
        its left with invalid positions (as ``BatchKVCache.extend`` does)."""
        size = max(self.size, other.size)
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            like = mine if mine.keys is not None else theirs
            if like.keys is None:
                continue
            cap = max(mine.capacity, theirs.capacity, size)
            a, b = _aligned(mine, self, size, cap, like), _aligned(theirs, other, size, cap, like)
            mine.keys = mx.concatenate([a[0], b[0]])
            mine.values = mx.concatenate([a[1], b[1]])
        self.valid = mx.concatenate([_valid_aligned(c, size) for c in (self, other)])
        self.size = size
        self.real = self.real + other.real
        self.offset = mx.concatenate([self.offset, other.offset])

    def filter(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (in that order), and drop leading positions none of them holds."""
        at = mx.array(keep, dtype=mx.int32)
        for layer in self.layers:
            if layer.keys is not None and layer.values is not None:
                layer.keys, layer.values = layer.keys[at], layer.values[at]
        self.valid, self.offset = self.valid[at], self.offset[at]
        self.real = [self.real[i] for i in keep]
        if not any(self.real) or self.size == 0:
            return
        lead = int(np.argmax(np.array(mx.any(self.valid[:, : self.size], axis=0))))
        if lead > 0:
            for layer in self.layers:
                if layer.keys is not None and layer.values is not None:
                    layer.keys, layer.values = layer.keys[..., lead:, :], layer.values[..., lead:, :]
            self.valid = self.valid[:, lead:]
            self.size -= lead

    # -- during a forward pass ------------------------------------------------------------------

    def mask(self, n: int, window_size: int | None = None) -> mx.array:
        """Which keys each of the ``n`` new queries sees: its row's valid positions, causally.
        The new positions count as valid for every row: a shorter row's right padding comes
        after its real positions, which causality keeps its real queries from seeing."""
        end = self.size + n
        if end <= self.valid.shape[1]:
            seen = self.valid[:, :end]  # positions from ``size`` on are valid
        else:
            fresh = mx.ones((len(self.real), n), dtype=mx.bool_)
            seen = mx.concatenate([self.valid[:, : self.size], fresh], axis=1)
        mask = seen[:, None, None, :]
        if n > 1 or window_size is not None:
            q = mx.arange(self.size, end)[:, None]
            k = mx.arange(end)[None]
            causal = q >= k
            if window_size is not None:
                causal = causal & (q < k + window_size)
            mask = mask & causal[None, None]
        return mask

    def turn(self, layer: int) -> int:
        """Where layer ``layer`` writes this pass's positions: the layers of a pass come in
        order, each once (the batch moves on after the last)."""
        if layer != self._next:
            raise RuntimeError(f"the model updated layer {layer}'s cache out of turn (expected {self._next})")
        return self.size

    def updated(self, layer: int, n: int) -> None:
        """Layer ``layer`` wrote this pass's ``n`` positions; after the last layer the batch
        holds them (every layer reads the same offsets and size until then)."""
        self._next += 1
        if self._next < len(self.layers):
            return
        self._next = 0
        self.size += n
        self.real = [r + n for r in self.real]
        self.offset = self.offset + n
        if self.size > self.valid.shape[1]:
            grow = ((self.size - self.valid.shape[1] + STEP - 1) // STEP) * STEP
            self.valid = mx.concatenate([self.valid, mx.ones((len(self.real), grow), dtype=mx.bool_)], axis=1)

    # -- after a step ---------------------------------------------------------------------------

    def trim(self, n: int) -> int:
        """Take back the last ``n`` positions of every row."""
        n = min(self.size, n)
        if n:
            self.size -= n
            self.real = [r - n for r in self.real]
            self.offset = self.offset - n
            self.valid[:, self.size : self.size + n] = True  # as if never written
        return n

    def punch(self, gaps: list[int]) -> None:
        """Row ``i`` drops its last ``gaps[i]`` positions (drafts it rejected) while the others
        keep theirs: they become invalid, and the row's next token goes at the batch's next
        position with its own token count as its RoPE position."""
        most = max(gaps, default=0)
        if most <= 0:
            return
        self.mask_last(most, mx.array([most - g for g in gaps], dtype=mx.int32))
        self.forget(gaps)

    def mask_last(self, width: int, keep: mx.array) -> None:
        """The device's half of ``punch``: of the last ``width`` positions, row ``i`` keeps its
        first ``keep[i]`` (an array that may still be computing: a step whose acceptance the
        device decides is punched before the host has seen it). ``forget`` follows, with the
        same gaps, once the host knows them."""
        first = self.size - width
        kept = mx.arange(width)[None] < keep[:, None]
        self.valid[:, first : self.size] = self.valid[:, first : self.size] & kept
        self.offset = self.offset - (width - keep)

    def forget(self, gaps: list[int]) -> None:
        """The host's half of ``punch``: row ``i`` holds ``gaps[i]`` tokens fewer; compact once
        the gaps are many."""
        self.real = [r - g for r, g in zip(self.real, gaps, strict=True)]
        if self.size - max(self.real, default=0) >= max(_COMPACT_AT, self.size // 4):
            self.compact()

    def compact(self) -> None:
        """Gather each row's valid positions to the right end of ``max(real)`` positions, the
        rest invalid left padding: one copy of the cache, after which there are no gaps. The
        gather's indices are worked out on the device (sorting each row's valid positions
        after its invalid ones), so compacting never waits for a step in flight."""
        size = max(self.real, default=0)
        where = mx.where(self.valid[:, : self.size], mx.arange(self.size, dtype=mx.int32)[None], -1)
        index = mx.maximum(mx.sort(where, axis=1)[:, self.size - size :], 0)
        at = index[:, None, :, None]
        for layer in self.layers:
            if layer.keys is not None and layer.values is not None:
                layer.keys = mx.take_along_axis(layer.keys[..., : self.size, :], at, axis=2)
                layer.values = mx.take_along_axis(layer.values[..., : self.size, :], at, axis=2)
        self.valid = mx.arange(size)[None] >= mx.array([size - r for r in self.real], dtype=mx.int32)[:, None]
        self.size = size


def _aligned(
    layer: RaggedLayer, batch: RaggedCache, size: int, cap: int, like: RaggedLayer
) -> tuple[mx.array, mx.array]:
    """``layer``'s rows over ``cap`` positions, ending at ``size``: left-padded, right-filled."""
    rows = len(batch.real)
    if layer.keys is None or layer.values is None:
        assert like.keys is not None and like.values is not None
        _, h, _, dk = like.keys.shape
        keys = mx.zeros((rows, h, cap, dk), dtype=like.keys.dtype)
        return keys, mx.zeros((rows, h, cap, like.values.shape[3]), dtype=like.values.dtype)
    left = size - batch.size
    keys, values = layer.keys, layer.values
    right = cap - keys.shape[2] - left
    if right < 0:  # room past its size that the other rows don't have: cut it
        keys, values, right = keys[..., :right, :], values[..., :right, :], 0
    if left or right:
        pad = [(0, 0), (0, 0), (left, right), (0, 0)]
        keys, values = mx.pad(keys, pad), mx.pad(values, pad)
    return keys, values


def _valid_aligned(batch: RaggedCache, size: int) -> mx.array:
    """``batch``'s validity over ``[0, size)``, left-padded with invalid positions (what comes
    past ``size`` is valid, and is grown when a step gets there)."""
    rows = len(batch.real)
    mine = batch.valid[:, : batch.size]
    return mx.concatenate([mx.zeros((rows, size - batch.size), dtype=mx.bool_), mine], axis=1)
