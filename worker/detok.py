"""Incremental text for one request: streaming detokenization plus stop strings.

mlx-lm's streaming detokenizer already holds back an incomplete UTF-8 sequence, so a
multi-byte character is never split. On top of it this holds back any tail that could still
grow into a stop string, and cuts the text just before a stop string once one appears.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TextStream:
    """Feed tokens, get the text that is safe to send now."""

    def __init__(self, detokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._detok = detokenizer
        self._stop = [s for s in stop if s]
        self._sent = 0  # characters of detok.text already handed out
        self.stopped = False  # a stop string was reached
        self.matched: str | None = None  # which one

    def push(self, token: int) -> str:
        """Add one generated token; return new text (possibly empty)."""
        if self.stopped:
            return ""
        self._detok.add_token(token)
        return self._release(final=False)

    def finish(self) -> str:
        """The generation ended: flush what the detokenizer and the stop check held back."""
        if self.stopped:
            return ""
        self._detok.finalize()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text: str = self._detok.text
        if self._stop:
            found = [(i, s) for s in self._stop if (i := text.find(s, self._sent)) >= 0]
            if found:
                cut, self.matched = min(found, key=lambda f: f[0])
                self.stopped = True
                out = text[self._sent : cut]
                self._sent = cut
                return out
            if not final:
                end = len(text) - _held_tail(text, self._sent, self._stop)
                out = text[self._sent : end]
                self._sent = end
                return out
        out = text[self._sent :]
        self._sent = len(text)
        return out


def _held_tail(text: str, start: int, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text[start:] that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text) - start), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
