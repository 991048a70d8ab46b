"""Prompt lookup: drafts for speculative decoding taken from the sequence itself.

An agent rewriting a file, or quoting what it was given, writes long runs of tokens that are
already in its context. Matching the sequence's last few tokens against its prompt and its own
output, and proposing what followed the most recent match, guesses those runs with no model at
all (llama.cpp's and vLLM's n-gram lookup). The target model then checks every guess in one
forward pass (``worker.decode``); a wrong guess costs a little compute, never a wrong token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


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

    def propose(self, k: int, ahead: Sequence[int] = ()) -> list[int]:
        """Up to ``k`` tokens that followed the most recent earlier occurrence of the longest
        suffix of the history that occurred before; none when no suffix of ``n_min`` tokens did.

        ``ahead``: tokens assumed to follow the history without being in it yet (a step still
        computing, which the decode batch expects to accept its drafts): the suffix is taken
        after them, and a match's continuation may run on into them. Their own n-grams are not
        indexed, so a match inside them is missed; a guess, so never a wrong token."""
        seq = self.tokens
        if k <= 0:
            return []
        tail = seq[max(0, len(seq) - self.n_max) :] + list(ahead) if ahead else seq
        for n in range(min(self.n_max, len(tail)), self.n_min - 1, -1):
            at = self._next[n].get(tuple(tail[len(tail) - n :]))
            if at is not None:
                return _continued(seq, ahead, at, k)
        return []


def _continued(seq: list[int], ahead: Sequence[int], at: int, k: int) -> list[int]:
    """``k`` tokens from position ``at`` of the history followed by ``ahead``; past their end
    the proposal runs on into itself. A recent match close to the end means the text repeats
    with a short period (a loop, a row of a table): the period goes on, instead of the
    proposal stopping at the last token it has seen."""
    out = seq[at : at + k]
    if len(out) == k:
        return out
    whole = seq[at:] + list(ahead)
    while len(whole) < k:
        whole.append(whole[len(whole) - (len(seq) + len(ahead) - at)])
    return whole[:k]
