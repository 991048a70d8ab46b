"""worker/reasoning.py, pure parts: the streaming splitter (markers split across any chunks), the
reasoning token counter, the budget processor's forcing, and the request parameters."""

from __future__ import annotations

import itertools

import mlx.core as mx
import pytest

from worker.detok import TextStream
from worker.reasoning import ReasoningBudget, ReasoningSyntax, ReasoningText, ThinkCounter, budget_of

THINK = ReasoningSyntax("<think>", "</think>", (7,), (8,))
CHANNEL = ReasoningSyntax("<|channel>thought", "<channel|>", (3, 4), (5, 6))  # multi-token markers


class Pieces:
    """A streaming detokenizer over text pieces: each "token" is the text it adds (the splitter
    only reads ``text``, as it does from mlx-lm's detokenizers)."""

    def __init__(self) -> None:
        self.text = ""

    def add_token(self, piece: str) -> None:  # type: ignore[override]
        self.text += piece

    def finalize(self) -> None:
        pass


def run(chunks: list[str], inside: bool = False) -> tuple[str, str, list[tuple[str, str]]]:
    """Feed the chunks; (content, reasoning, what each chunk released as (reasoning, content))."""
    split = ReasoningText(Pieces(), THINK, inside)
    released: list[tuple[str, str]] = []
    seen = 0
    for c in chunks:
        split.add_token(c)  # type: ignore[arg-type]
        released.append((split.take(), split.text[seen:]))
        seen = len(split.text)
    split.finalize()
    released.append((split.take(), split.text[seen:]))
    return split.text, "".join(r for r, _ in released), released


def cuts(text: str, parts: int) -> list[list[str]]:
    """Every way to cut ``text`` into ``parts`` chunks (some possibly empty)."""
    out = []
    for points in itertools.combinations_with_replacement(range(len(text) + 1), parts - 1):
        bounds = [0, *points, len(text)]
        out.append([text[a:b] for a, b in itertools.pairwise(bounds)])
    return out


TEXT = "ab<think>c<d</think>e</f"


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_markers_split_across_any_chunks_are_found(parts: int) -> None:
    for chunks in cuts(TEXT, parts):
        content, reasoning, released = run(chunks)
        assert (content, reasoning) == ("abe</f", "c<d"), chunks
        for r, c in released:  # nothing of a marker ever leaks out, in either part
            assert "<think" not in r + c and "/think" not in r + c, chunks


def test_text_before_the_marker_is_released_at_once_and_a_held_tail_waits() -> None:
    _, _, released = run(["hello <", "thi", "nk>deep", " thought</th", "ink>done"])
    assert released == [("", "hello "), ("", ""), ("deep", ""), (" thought", ""), ("", "done"), ("", "")]


def test_a_prompt_that_opened_the_reasoning_starts_inside() -> None:
    content, reasoning, _ = run(["thinking", "</think>", "answer"], inside=True)
    assert (content, reasoning) == ("answer", "thinking")


def test_an_unfinished_marker_at_the_end_is_text_of_its_part() -> None:
    assert run(["a <thi"])[:2] == ("a <thi", "")
    assert run(["<think>x </thi"])[:2] == ("", "x </thi")


def test_stop_strings_ignore_the_reasoning() -> None:
    stream = TextStream(ReasoningText(Pieces(), THINK), ["STOP"])
    out = [stream.push(p) for p in ["<think>", "no STOP here", "</think>", "yes", " STOP", " more"]]  # type: ignore[arg-type]
    assert "".join(out) == "yes " and stream.stopped and stream.matched == "STOP"


def test_think_counter_counts_reasoning_tokens_with_their_markers() -> None:
    c = ThinkCounter(THINK)
    for t in [1, 7, 2, 2, 8, 1, 7, 2, 8]:
        c.feed(t)
    assert c.count == 7 and not c.inside  # <think> 2 2 </think> + <think> 2 </think>
    inside = ThinkCounter(THINK, inside=True)
    for t in [2, 2, 8, 1]:
        inside.feed(t)
    assert inside.count == 3
    multi = ThinkCounter(CHANNEL)
    for t in [1, 3, 4, 2, 5, 6, 1]:
        multi.feed(t)
    assert multi.count == 5 and not multi.inside


def drive(
    budget_proc: ReasoningBudget, prompt: list[int], natural: list[int], steps: int, vocab: int = 10
) -> list[int]:
    """Sample greedily ``steps`` tokens; the model "wants" ``natural[i]`` at step i."""
    tokens = list(prompt)
    out = []
    for i in range(steps):
        logits = mx.zeros((1, vocab))
        logits[0, natural[i]] = 5.0
        logits = budget_proc(mx.array(tokens)[None], logits)
        t = int(mx.argmax(logits, axis=-1).item())
        out.append(t)
        tokens.append(t)
    return out


def test_budget_forces_the_end_marker_after_budget_reasoning_tokens() -> None:
    # the prompt opened the reasoning; the model would go on thinking (token 2) forever
    out = drive(ReasoningBudget(THINK, 3, inside=True), [1, 7], [2] * 8, 8)
    assert out == [2, 2, 2, 8, 2, 2, 2, 2]
    # the model opens the reasoning itself; the budget covers every block of the answer
    out = drive(ReasoningBudget(THINK, 2), [1], [1, 7, 2, 2, 2, 1, 7, 2, 2], 9)
    assert out == [1, 7, 2, 2, 8, 1, 7, 8, 2]


def test_budget_zero_closes_the_reasoning_at_once_and_multi_token_markers_are_forced_whole() -> None:
    assert drive(ReasoningBudget(THINK, 0, inside=True), [7], [2] * 3, 3) == [8, 2, 2]
    out = drive(ReasoningBudget(CHANNEL, 1), [1], [3, 4, 2, 2, 2, 1], 6)
    assert out == [3, 4, 2, 5, 6, 1]


def test_a_model_that_ends_its_reasoning_itself_is_not_forced() -> None:
    assert drive(ReasoningBudget(THINK, 5, inside=True), [7], [2, 8, 1, 1], 4) == [2, 8, 1, 1]


def test_prompt_opening_is_read_from_the_last_markers() -> None:
    assert THINK.opens([1, 7])
    assert not THINK.opens([1, 7, 2, 8, 1])
    assert THINK.opens([1, 7, 2, 8, 1, 7, 2])
    assert not THINK.opens([1, 2])
    assert CHANNEL.opens([1, 3, 4]) and not CHANNEL.opens([3, 4, 5, 6])


@pytest.mark.parametrize(
    ("inp", "params", "budget"),
    [
        ({}, {}, None),
        ({"enable_thinking": True}, {}, None),
        ({"enable_thinking": True}, {"thinking_budget": 50}, 50),
        ({"enable_thinking": False}, {}, 0),
        ({"enable_thinking": False}, {"thinking_budget": 50}, 0),
        ({}, {"thinking_budget": 7}, 7),
    ],
)
def test_budget_of_a_request(inp: dict[str, object], params: dict[str, object], budget: int | None) -> None:
    assert budget_of(inp, params) == budget


def test_delta_reasoning_crosses_the_wire() -> None:
    import orjson

    from shared.codec import ProtocolError, decode, encode
    from shared.protocol import Delta

    d = Delta("r", "answer", 3, None, None, "thought")
    assert decode(*encode(d)) == d
    assert decode(b"delta", orjson.dumps({"id": "r", "text": "", "tokens": 1})) == Delta("r", "", 1)  # optional
    with pytest.raises(ProtocolError):
        decode(b"delta", orjson.dumps({"id": "r", "text": "", "tokens": 1, "reasoning": 5}))
