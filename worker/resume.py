"""Resuming a generation whose worker died (the worker's side; the gateway's is gateway/resume.py).

The gateway knows every token a generation produced so far (each ``delta`` carries its
``token_ids``) and how much of its output the client already has. When the worker dies, it
sends the same ``generate`` to another worker with ``params["resume"]``:

    {"tokens": [every generated token id, in order], "text": characters of text the client
     has, "tool_calls": tool calls the client has, "reasoning": characters of reasoning it has}

The engine then

- appends the tokens to the prompt: a forced continuation, prefilled like any prompt (the KV
  prompt cache helps), never sampled again. mlx-lm's batch hands logits processors the
  sequence's whole token history (prompt, then generated tokens), so penalties, ``logit_bias``
  and any processor that reads that history see exactly what they saw before the death;
- replays the tokens through its own per-token path (detokenizer, reasoning splitter and
  counter, stop strings, tool-call parser, loop guard: ``EngineCore._respond``), so their state
  is as if nothing had happened, and gives stateful logits processors (``fast_forward``) the
  calls they would have had;
- drops from the replayed output what the client already has (``unsent``): what is left is
  text the dead worker was still holding back (a possible stop string, a tool call being
  written, half a character), and goes out with the next delta;
- lowers ``max_tokens`` by the tokens already generated and counts usage for the whole answer
  (``prompt_tokens`` the original prompt's; the forced tokens count as completion tokens once);
- fast-forwards a seeded sampler's key by one draw per forced token (worker/sampling.py), so a
  seeded generation continues the same random stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.protocol import RESUME_PARAM, Delta, Message


class ResumeMismatch(ValueError):
    """The replayed tokens do not give what the client already has (they should, always)."""


@dataclass(frozen=True)
class Resume:
    tokens: list[int]
    text: int  # characters of text the client already has
    tool_calls: int  # tool calls the client already has
    reasoning: int = 0  # characters of reasoning the client already has

    @classmethod
    def of(cls, params: dict[str, Any], vocab_size: int) -> Resume | None:
        """The ``resume`` parameter, checked (a ``ValueError`` names what is wrong); None without one."""
        raw = params.get(RESUME_PARAM)
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise ValueError("resume must be an object")
        tokens, text, calls = raw.get("tokens"), raw.get("text", 0), raw.get("tool_calls", 0)
        reasoning = raw.get("reasoning", 0)
        if not isinstance(tokens, list) or not tokens or not all(_int(t) and 0 <= t < vocab_size for t in tokens):
            raise ValueError(f"resume.tokens must be a non-empty list of token ids (0 to {vocab_size - 1})")
        if not all(_int(n) and n >= 0 for n in (text, calls, reasoning)):
            raise ValueError("resume.text, resume.tool_calls and resume.reasoning must be counts (integers >= 0)")
        return cls(list(tokens), text, calls, reasoning)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def unsent(resume: Resume, replayed: list[Message]) -> tuple[list[Delta], list[Message]]:
    """Split the replay's messages: its deltas trimmed of what the client already has (the first
    ``resume.reasoning`` characters of reasoning, ``resume.text`` of text, ``resume.tool_calls``
    calls: each kind is a stream of its own, so each is cut on its own), empty ones dropped, in
    order; and whatever else the replay produced (a ``done``, if a forced token ended it).
    The trimmed deltas carry no token ids: the gateway has them all."""
    reasoning, text, calls = resume.reasoning, resume.text, resume.tool_calls
    kept: list[Delta] = []
    rest: list[Message] = []
    for m in replayed:
        if not isinstance(m, Delta):
            rest.append(m)
            continue
        r, reasoning = m.reasoning[reasoning:], max(0, reasoning - len(m.reasoning))
        t, text = m.text[text:], max(0, text - len(m.text))
        have = m.tool_calls or []
        c, calls = have[calls:], max(0, calls - len(have))
        if r or t or c:
            kept.append(Delta(m.id, t, m.tokens, None, c or None, r, []))
    if reasoning or text or calls:
        raise ResumeMismatch(
            f"the replay gave {resume.reasoning - reasoning} of {resume.reasoning} characters of reasoning, "
            f"{resume.text - text} of {resume.text} of text and {resume.tool_calls - calls} of "
            f"{resume.tool_calls} tool calls the client already has"
        )
    return kept, rest


def fast_forward(processors: Sequence[Any], history: Sequence[int], forced: Sequence[int], vocab: int) -> None:
    """Bring stateful logits processors to where they were after ``forced`` was generated.

    mlx-lm calls a request's processors once per sampled token with the token history (the
    prompt, then the tokens generated so far). Most processors are pure functions of that
    history (penalties, ``logit_bias``), and a resume gives them the same history. One that keeps
    state across calls says so with ``stateful = True`` (the reasoning budget; a grammar
    matcher): it gets the calls it would have had, one per forced token, with the history of
    that moment (``history`` is the prompt) and zero logits of the vocabulary's width, whose
    result is dropped. The resumed batch's first call is then its next one."""
    todo = [p for p in processors if getattr(p, "stateful", False)]
    if not todo:
        return
    import mlx.core as mx

    tokens = list(history)
    zeros = mx.zeros((1, vocab))
    for i in range(len(forced)):
        ctx = mx.array(tokens + list(forced[:i]))
        outs = [p(ctx, zeros) for p in todo]
        if i % 64 == 63 or i == len(forced) - 1:
            mx.eval(outs)  # their state, computed lazily, is what these depend on
