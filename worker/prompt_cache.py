"""The worker's KV prompt cache: reuse the longest cached prefix of a new prompt.

Agents and chat clients resend the whole conversation every turn; recomputing its KV cache is
most of the time to first token on a CPU. When a sequence finishes (or is stopped or cancelled),
its KV cache and the tokens it holds go into mlx-lm's ``LRUPromptCache`` (a token trie with an
LRU bounded in entries and bytes); a new prompt starts from the nearest cached prefix, trimmed
where the conversation diverged, and only the rest is prefilled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

_KEY = "model"  # one model per worker: the trie's model key is a constant


class PromptCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._lru = LRUPromptCache(max_size=max_entries, max_bytes=max_bytes)

    def lookup(self, tokens: Sequence[int]) -> tuple[list[Any] | None, int]:
        """A private copy of the nearest cache and how many leading tokens of ``tokens`` it holds;
        at least one token is always left to prefill (the batch needs one to start from)."""
        cache, rest = self._lru.fetch_nearest_cache(_KEY, list(tokens))
        if cache is None:
            return None, 0
        if not rest:
            if not can_trim_prompt_cache(cache):
                return None, 0
            trim_prompt_cache(cache, 1)
            rest = list(tokens[-1:])
        return cache, len(tokens) - len(rest)

    def store(self, tokens: Sequence[int], cache: list[Any] | None) -> None:
        if cache and tokens:
            self._lru.insert_cache(_KEY, list(tokens), cache)

    @property
    def nbytes(self) -> int:
        return int(self._lru.nbytes)

    def __len__(self) -> int:
        return len(self._lru)
