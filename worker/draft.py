"""A draft model: a small model of the same tokenizer proposes the target model's next tokens.

Its KV cache follows the target's rows (``worker.decode.DecodeBatch``): a row joins with its
history prefilled, each step feeds it what the target accepted since (one or two tokens,
right-padded and aligned as the target's own ragged step), then it drafts greedily one token
at a time, all rows together; after verification the drafts the target rejected are trimmed
off again. Greedy drafts are a one-hot proposal, for which the target's sample-and-compare
check is the optimal acceptance rule and keeps its output distribution exact.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from worker.decode import Row, can_verify
from worker.ragged_cache import RaggedCache

PREFILL_CHUNK = 512  # a joining row's history is prefilled this many tokens at a time


class DraftError(RuntimeError):
    """A draft model that can't serve this target (its tokenizer or cache differs): load fails."""


def check_pair(
    target_tokenizer: Any, draft_tokenizer: Any, draft_model: Any, target_vocab: int, draft_vocab: int
) -> None:
    """The draft must share the target's vocabulary (the same token ids for the same text) and
    keep a cache whose drafts can be taken back."""
    if target_vocab != draft_vocab:
        raise DraftError(f"draft_model: its vocabulary has {draft_vocab} tokens, the model's {target_vocab}")
    probe = "Hearth drafts tokens: def f(x):\n    return x * 2  # ünïcode"
    if list(target_tokenizer.encode(probe)) != list(draft_tokenizer.encode(probe)):
        raise DraftError("draft_model: its tokenizer splits text differently from the model's")
    if not can_verify(make_prompt_cache(draft_model)):
        raise DraftError("draft_model: its cache can't be trimmed (only plain KV-cache models can draft)")


def load_draft(cfg: Any, target: Any) -> Any:
    """The draft model's weights for ``cfg`` (its ``draft_model`` path, loaded as the model's own
    path is: a GGUF file is imported once), checked against the ``target`` it drafts for."""
    import dataclasses

    from worker.model import load_model

    draft = load_model(dataclasses.replace(cfg, path=cfg.draft_model, draft_model=None, speculative="off"))
    check_pair(target.tokenizer, draft.tokenizer, draft.model, target.vocab_size, draft.vocab_size)
    return draft.model


class DraftModel:
    """Proposes drafts for every row of a decode batch from one small model."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._cache: RaggedCache | None = None
        self._rows = 0
        self._fed: list[list[int]] = []  # per row: this step's drafts fed into the cache (all but the last)

    def add(self, row: Row) -> None:
        cache = make_prompt_cache(self.model)
        history = row.tokens
        for start in range(0, len(history), PREFILL_CHUNK):
            self.model(mx.array(history[start : start + PREFILL_CHUNK])[None], cache=cache)
            mx.eval([c.state for c in cache])
        row.draft_len = len(history)
        merged = RaggedCache.single(cache)
        if not self._rows or self._cache is None:
            self._cache = merged
        else:
            self._cache.extend(merged)
        self._rows += 1
        self._fed.append([])

    def remove(self, index: int) -> None:
        keep = [i for i in range(self._rows) if i != index]
        self._rows -= 1
        del self._fed[index]
        if keep and self._cache is not None:
            self._cache.filter(keep)
        else:
            self._cache = None

    def propose(self, rows: list[Row], ks: list[int]) -> list[list[int]]:
        """Up to ``ks[i]`` greedy drafts for row ``i``, continuing its history (its tokens and
        its pending next input)."""
        most = max(ks)
        feeds = [[*r.tokens, r.pending][r.draft_len :] for r in rows]
        width = max(len(f) for f in feeds)
        inputs = mx.array([f + [0] * (width - len(f)) for f in feeds])
        assert self._cache is not None
        logits = self.model(inputs, cache=self._cache.layers)
        last = mx.array([len(f) - 1 for f in feeds])
        token = mx.argmax(logits[mx.arange(len(rows)), last], axis=-1)
        shift = [width - len(f) for f in feeds]
        self._cache.punch(shift)
        for r, f in zip(rows, feeds, strict=True):
            r.draft_len += len(f)
        drafted = [token]
        for _ in range(most - 1):
            token = mx.argmax(self.model(token[:, None], cache=self._cache.layers)[:, -1], axis=-1)
            drafted.append(token)
        table: list[list[int]] = mx.stack(drafted, axis=1).tolist()  # type: ignore[assignment]
        self._fed = [t[: most - 1] for t in table]
        return [t[:k] for t, k in zip(table, ks, strict=True)]

    def accepted(self, rows: list[Row]) -> None:
        """The target verified this step: keep each row's fed drafts that it accepted."""
        width = max((len(f) for f in self._fed), default=0)
        if not width:
            return
        keeps = []
        for r, fed in zip(rows, self._fed, strict=True):
            history = [*r.tokens, r.pending]
            n = 0
            while n < len(fed) and r.draft_len + n < len(history) and history[r.draft_len + n] == fed[n]:
                n += 1
            keeps.append(n)
            r.draft_len += n
        most = max(keeps)
        assert self._cache is not None
        self._cache.trim(width - most)
        self._cache.punch([most - k for k in keeps])
        self._fed = [[] for _ in rows]
