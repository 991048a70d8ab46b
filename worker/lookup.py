"""Prompt lookup: drafts for speculative decoding taken from the sequence itself.

An agent rewriting a file, or quoting what it was given, writes long runs of tokens that are
already in its context. Matching the sequence's last few tokens against its prompt and its own
output, and proposing what followed the most recent match, guesses those runs with no model at
all (llama.cpp's and vLLM's n-gram lookup). The target model then checks every guess in one
forward pass (``worker.decode``); a wrong guess costs a little compute, never a wrong token.
"""

from __future__ import annotations

from collections.abc import Iterable


class PromptLookup:
    """One sequence's n-gram index: for every n-gram (``n_min`` to ``n_max`` tokens) of its
    history, where the token that followed its most recent occurrence sits. Kept up to date
    token by token, so a lookup is a few dictionary reads whatever the context's length."""

    def __init__(self, history: Iterable[int] = (), n_max: int = 4, n_min: int = 2) -> None:
        self.n_max, self.n_min = n_max, n_min
        self.tokens: list[int] = []
        self._next: list[dict[tuple[int, ...], int]] = [{} for _ in range(n_max + 1)]
        self.extend(history)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append the tokens the sequence now holds (prompt, then what it generated)."""
        seq, index = self.tokens, self._next
        for t in tokens:
            seq.append(t)
            end = len(seq) - 1  # the new token's position: it follows the n-grams ending before it
            for n in range(self.n_min, min(self.n_max, end) + 1):
                index[n][tuple(seq[end - n : end])] = end

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the most recent earlier occurrence of the longest
        suffix of the history that occurred before; none when no suffix of ``n_min`` tokens did."""
        seq = self.tokens
        if k <= 0:
            return []
        for n in range(min(self.n_max, len(seq)), self.n_min - 1, -1):
            at = self._next[n].get(tuple(seq[len(seq) - n :]))
            if at is not None:
                return seq[at : at + k]
        return []
