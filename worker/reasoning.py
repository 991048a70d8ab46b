"""Reasoning ("thinking") output: split out of the content, counted, and capped.

A reasoning model writes its thoughts between markers (``<think>`` … ``</think>`` for Qwen3 and
DeepSeek-R1; mlx-lm's tokenizer wrapper knows the markers of each family it supports:
``has_thinking``, ``think_start``/``think_end`` and their token ids). Three pieces use them:

- ``ReasoningText`` sits between mlx-lm's streaming detokenizer and ``worker.detok.TextStream``:
  it looks like a detokenizer whose ``text`` is the content only, and keeps the reasoning for
  ``take``. So stop strings and tool-call parsing, which read that text, never see reasoning.
  The markers are found in the decoded text by mlx-lm's ``TextStateMachine`` (as mlx_lm.server
  does), which holds back a tail that may still grow into a marker: a marker split across
  tokens or deltas is still found, and never leaks into either part.
- ``ThinkCounter`` follows the generated token ids to count the reasoning tokens for ``usage``.
- ``ReasoningBudget`` is a logits processor that forces the end marker once the reasoning has
  used its budget (Anthropic's ``thinking.budget_tokens``; budget 0 when thinking is disabled).
  Its state lives in MLX arrays updated with lazy ``mx`` ops, so it never waits for a token to
  be evaluated and the batch keeps its one step in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.generate import TextStateMachine

_NORMAL = "normal"
_REASONING = "reasoning"
OPEN_WINDOW = 32  # the prompt's last tokens searched for an open reasoning block


@dataclass(frozen=True)
class ReasoningSyntax:
    """One model family's reasoning markers, as text and as token ids."""

    start: str
    end: str
    start_ids: tuple[int, ...]
    end_ids: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer: Any) -> ReasoningSyntax | None:
        """The markers mlx-lm's tokenizer wrapper inferred for this model (None: it has none)."""
        if not getattr(tokenizer, "has_thinking", False):
            return None
        start_ids, end_ids = tokenizer.think_start_tokens, tokenizer.think_end_tokens
        if not start_ids or not end_ids:
            return None
        return cls(str(tokenizer.think_start), str(tokenizer.think_end), tuple(start_ids), tuple(end_ids))

    def opens(self, prompt: Sequence[int]) -> bool:
        """Whether the prompt leaves a reasoning block open (a template whose generation prompt
        ends with ``<think>``, as DeepSeek-R1's): the output then starts inside the reasoning."""
        tail = list(prompt[-OPEN_WINDOW:])
        return _rfind(tail, self.start_ids) > _rfind(tail, self.end_ids)


def _rfind(tokens: list[int], seq: tuple[int, ...]) -> int:
    n = len(seq)
    for i in range(len(tokens) - n, -1, -1):
        if tuple(tokens[i : i + n]) == seq:
            return i
    return -1


class ReasoningText:
    """A streaming detokenizer (the ``add_token``/``finalize``/``text`` that ``TextStream``
    uses) whose ``text`` is the content only; the reasoning goes to ``take``."""

    def __init__(self, detokenizer: Any, syntax: ReasoningSyntax, inside: bool = False) -> None:
        self._detok = detokenizer
        machine = TextStateMachine({_NORMAL: [(syntax.start, _REASONING)], _REASONING: [(syntax.end, _NORMAL)]})
        self._state = machine.make_state(_REASONING if inside else _NORMAL)
        self._read = 0  # characters of the detokenizer's text already split
        self.text = ""  # the content so far
        self._reasoning: list[str] = []  # reasoning not taken yet

    @property
    def inside(self) -> bool:
        return bool(self._state[0] == _REASONING)

    def add_token(self, token: int) -> None:
        self._detok.add_token(token)
        self._split(self._new_text())

    def finalize(self) -> None:
        """The output ended: what the detokenizer and the marker matching held back belongs to
        the part it was written in (an unfinished marker is text)."""
        self._detok.finalize()
        self._split(self._new_text())
        self._state, held, state = TextStateMachine.flush(self._state)
        self._put(state, held)

    def take(self) -> str:
        """The reasoning text that came since the last call."""
        out = "".join(self._reasoning)
        self._reasoning.clear()
        return out

    def _new_text(self) -> str:
        full: str = self._detok.text
        new = full[self._read :]
        self._read = len(full)
        return new

    def _split(self, text: str) -> None:
        if not text:
            return
        self._state, segments = TextStateMachine.split(self._state, text)
        for state, piece in segments:
            self._put(state, piece)

    def _put(self, state: str, piece: str) -> None:
        if not piece:
            return
        if state == _REASONING:
            self._reasoning.append(piece)
        else:
            self.text += piece


class ThinkCounter:
    """Follows generated token ids: how many belong to reasoning (its markers included)."""

    def __init__(self, syntax: ReasoningSyntax, inside: bool = False) -> None:
        self._start, self._end = syntax.start_ids, syntax.end_ids
        self._keep = max(len(self._start), len(self._end))
        self._recent: list[int] = []
        self.inside = inside
        self.count = 0

    def feed(self, token: int) -> None:
        self._recent = [*self._recent[-(self._keep - 1) :], token] if self._keep > 1 else [token]
        if self.inside:
            self.count += 1
            if tuple(self._recent[-len(self._end) :]) == self._end:
                self.inside = False
        elif tuple(self._recent[-len(self._start) :]) == self._start:
            self.inside = True
            self.count += len(self._start)


class ReasoningBudget:
    """A logits processor (mlx-lm's ``(tokens, logits) -> logits``) that lets the reasoning run
    for ``budget`` tokens, then forces the end marker, token by token. A later reasoning block
    shares the same budget (it is the whole answer's), so once spent a new block is closed at once.

    It is called once per sampled token, with the sequence's tokens so far (their last one the
    token sampled before); the first call comes before any token was generated. The state is in
    MLX arrays updated lazily: no ``item()``, so the batch step is never made to wait.
    """

    stateful = True  # its state follows its calls: a resume replays them (worker/resume.py)

    def __init__(self, syntax: ReasoningSyntax, budget: int, inside: bool = False) -> None:
        self._start = mx.array(syntax.start_ids)
        self._end = mx.array(syntax.end_ids)
        self._budget = max(0, int(budget))
        self._first = True
        self._inside = mx.array(inside)
        self._count = mx.array(0)  # reasoning tokens so far (the end marker's excluded)
        self._forcing = mx.array(False)  # the last token was forced
        self._forced = mx.array(0)  # end-marker tokens forced so far

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if not self._first:
            ctx = tokens.reshape(-1)
            ended = _tail_is(ctx, self._end)
            started = _tail_is(ctx, self._start)
            was = self._inside
            self._inside = mx.where(was, mx.logical_not(ended), started)
            counted = mx.logical_and(was, mx.logical_not(mx.logical_or(ended, self._forcing)))
            self._count = self._count + counted.astype(mx.int32)
            self._forced = mx.where(mx.logical_and(self._forcing, self._inside), self._forced + 1, 0)
        self._first = False
        force = mx.logical_and(self._inside, self._count >= self._budget)
        self._forcing = force
        target = self._end[mx.minimum(self._forced, self._end.size - 1)]
        vocab = mx.arange(logits.shape[-1])
        only = mx.where(vocab == target, logits, mx.array(-mx.inf, dtype=logits.dtype))
        return mx.where(force, only, logits)


def _tail_is(ctx: mx.array, seq: mx.array) -> mx.array:
    n = seq.size
    if ctx.size < n:
        return mx.array(False)
    return mx.all(ctx[-n:] == seq)


# -- request parameters ------------------------------------------------------------------------


def budget_of(inp: dict[str, Any], params: dict[str, Any]) -> int | None:
    """The reasoning budget a request sets: ``thinking_budget``, or 0 when its input turns
    thinking off (``enable_thinking`` false: the template's switch where it has one, and this cap
    always, so no reasoning comes out even from a template without the switch). None: no cap."""
    if inp.get("enable_thinking") is False:
        return 0
    budget = params.get("thinking_budget")
    return int(budget) if budget is not None else None
