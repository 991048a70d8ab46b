"""worker.detok.TextStream over mlx-lm's real streaming detokenizer (tiny byte-level BPE
tokenizer, built once per module), and the pure helper ``_held_tail``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.tinymodel import CORPUS, build_tiny_model
from worker.detok import TextStream, _held_tail

SAMPLE = "Grüße 東京 🚀 naïve"


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mlx_lm.tokenizer_utils import load

    return load(build_tiny_model(tmp_path_factory.mktemp("tiny-detok")))


def encode(tok: Any, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False))


def stream_all(tok: Any, ids: Sequence[int], stop: Sequence[str] = ()) -> tuple[list[str], TextStream]:
    """Push every token, then finish; the chunks in order (the last one from finish())."""
    ts = TextStream(tok.detokenizer, stop)
    chunks = [ts.push(t) for t in ids]
    chunks.append(ts.finish())
    return chunks, ts


def assert_clean(chunks: Sequence[str]) -> None:
    for c in chunks:
        assert isinstance(c, str)
        c.encode("utf-8")  # a lone surrogate would raise here
        assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in c)
        assert "\ufffd" not in c


def full_text(tok: Any, ids: Sequence[int]) -> str:
    d = tok.detokenizer
    for t in ids:
        d.add_token(t)
    d.finalize()
    return d.text


# ---- the tokenizer really splits characters across tokens (else these tests prove little) ----


def test_sample_splits_multibyte_characters_across_tokens(tok: Any) -> None:
    ids = encode(tok, SAMPLE)
    assert tok.decode(ids) == SAMPLE
    pieces = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces), pieces  # some token is a fragment of a character


# ---- plain streaming -------------------------------------------------------------------------


def test_round_trip_one_token_at_a_time(tok: Any) -> None:
    ids = encode(tok, SAMPLE)
    chunks, ts = stream_all(tok, ids)
    assert "".join(chunks) == SAMPLE
    assert not ts.stopped
    assert_clean(chunks)
    assert sum(1 for c in chunks if c) > 1  # it really streamed


@pytest.mark.parametrize("text", sorted(set(CORPUS)) + ["a", "🚀🚀🚀", "x \n y  z", "東"], ids=range(9))
def test_round_trip_of_corpus_lines(tok: Any, text: str) -> None:
    ids = encode(tok, text)
    chunks, _ = stream_all(tok, ids)
    assert "".join(chunks) == text
    assert_clean(chunks)


def test_every_prefix_of_the_output_is_valid_text(tok: Any) -> None:
    ids = encode(tok, SAMPLE)
    ts = TextStream(tok.detokenizer)
    sent = ""
    for t in ids:
        sent += ts.push(t)
        assert SAMPLE.startswith(sent)
        sent.encode("utf-8")
    sent += ts.finish()
    assert sent == SAMPLE


def test_detokenizers_are_independent(tok: Any) -> None:
    a, b = TextStream(tok.detokenizer), TextStream(tok.detokenizer)
    out_a, out_b = "", ""
    ids_a, ids_b = encode(tok, "東京 Paris"), encode(tok, "naïve café")
    for i in range(max(len(ids_a), len(ids_b))):
        if i < len(ids_a):
            out_a += a.push(ids_a[i])
        if i < len(ids_b):
            out_b += b.push(ids_b[i])
    assert out_a + a.finish() == "東京 Paris"
    assert out_b + b.finish() == "naïve café"


def test_finish_with_no_tokens_is_empty(tok: Any) -> None:
    ts = TextStream(tok.detokenizer, ["x"])
    assert ts.finish() == ""
    assert not ts.stopped


# ---- stop strings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        (["東京"], "Grüße "),
        (["🚀"], "Grüße 東京 "),
        (["naïve"], "Grüße 東京 🚀 "),
        ([" "], "Grüße"),
        (["ße"], "Grü"),
        (["G"], ""),
        (["ïve"], "Grüße 東京 🚀 na"),
    ],
)
def test_single_stop_string_cuts_before_it(tok: Any, stop: list[str], expected: str) -> None:
    chunks, ts = stream_all(tok, encode(tok, SAMPLE), stop)
    assert "".join(chunks) == expected
    assert ts.stopped
    assert_clean(chunks)


def test_stop_string_as_in_core_a_plain_list_of_one(tok: Any) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    chunks, ts = stream_all(tok, encode(tok, text), ["fox"])
    assert "".join(chunks) == "The quick brown "
    assert ts.stopped


def test_earliest_of_several_stop_strings_wins(tok: Any) -> None:
    ids = encode(tok, SAMPLE)
    for stops in (["naïve", "東京", "🚀"], ["🚀", "東京"], ["zzz", "京", "naïve"]):
        chunks, ts = stream_all(tok, ids, stops)
        cut = min(SAMPLE.find(s) for s in stops if s in SAMPLE)
        assert "".join(chunks) == SAMPLE[:cut], stops
        assert ts.stopped
        assert ts.matched is not None and SAMPLE.find(ts.matched) == cut  # which one, for stop_sequence


def test_earliest_wins_when_both_complete_in_one_push(tok: Any) -> None:
    text = "Paris is the capital of France."
    ids = encode(tok, text)
    chunks, _ = stream_all(tok, ids, ["capital", "is the capital"])
    assert "".join(chunks) == "Paris "


def test_after_a_stop_pushes_and_finish_give_nothing(tok: Any) -> None:
    ids = encode(tok, SAMPLE + " The quick brown fox")
    ts = TextStream(tok.detokenizer, ["東京"])
    out = ""
    stopped_at = None
    for i, t in enumerate(ids):
        chunk = ts.push(t)
        if stopped_at is not None:
            assert chunk == ""
        out += chunk
        if ts.stopped and stopped_at is None:
            stopped_at = i
    assert stopped_at is not None and stopped_at < len(ids) - 1
    assert ts.finish() == ""
    assert ts.stopped
    assert out == "Grüße "


def test_stop_string_split_across_tokens_is_found_and_its_prefix_never_sent(tok: Any) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    stop = "quick brown"
    ids = encode(tok, text)
    # the stop string really spans several tokens
    assert not any(stop in tok.decode([i]) for i in ids)
    ts = TextStream(tok.detokenizer, [stop])
    sent = ""
    for t in ids:
        sent += ts.push(t)
        assert "q" not in sent, sent  # not even the first character of the stop string leaks
        if ts.stopped:
            break
    assert ts.stopped
    assert sent == "The "
    assert ts.finish() == ""


def test_multibyte_stop_string_split_inside_a_character(tok: Any) -> None:
    ids = encode(tok, SAMPLE)
    ts = TextStream(tok.detokenizer, ["京 🚀"])
    chunks = [ts.push(t) for t in ids]
    assert "".join(chunks) == "Grüße 東"
    assert ts.stopped
    assert_clean(chunks)


def test_false_prefix_is_released_once_it_cannot_be_a_stop(tok: Any) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    ids = encode(tok, text)
    ts = TextStream(tok.detokenizer, ["quick red"])
    sent = ""
    released_before_finish = False
    for t in ids:
        sent += ts.push(t)
        if "quick brown" in sent:
            released_before_finish = True
    assert released_before_finish  # held only while it could still become the stop string
    sent += ts.finish()
    assert sent == text
    assert not ts.stopped


def test_held_prefix_at_the_end_is_released_by_finish(tok: Any) -> None:
    text = "Paris is the capital of France"
    ids = encode(tok, text)
    ts = TextStream(tok.detokenizer, ["France!"])
    sent = "".join(ts.push(t) for t in ids)
    assert not sent.endswith("France")  # held back: it may still become "France!"
    tail = ts.finish()
    assert sent + tail == text
    assert tail.endswith("France")
    assert not ts.stopped


def test_stop_string_that_never_appears_changes_nothing(tok: Any) -> None:
    chunks, ts = stream_all(tok, encode(tok, SAMPLE), ["zzz", "東京!"])
    assert "".join(chunks) == SAMPLE
    assert not ts.stopped and ts.matched is None


def test_empty_stop_strings_are_ignored(tok: Any) -> None:
    ids = encode(tok, SAMPLE)
    chunks, ts = stream_all(tok, ids, [""])
    assert "".join(chunks) == SAMPLE and not ts.stopped
    chunks, ts = stream_all(tok, ids, ["", "東京", ""])
    assert "".join(chunks) == "Grüße " and ts.stopped
    # with only empty stop strings nothing is held back either
    ts = TextStream(tok.detokenizer, ["", ""])
    first_word = encode(tok, "Paris")
    assert "".join(ts.push(t) for t in first_word) == "Paris"


def test_stop_string_found_only_at_finish(tok: Any) -> None:
    """A trailing single space is held by the BPE detokenizer until finalize; a stop string
    ending in it must still be found then."""
    text = "Paris is "
    ids = encode(tok, text)
    assert full_text(tok, ids[:-1]) == full_text(tok, ids).rstrip(" ")
    ts = TextStream(tok.detokenizer, ["s is "])
    sent = "".join(ts.push(t) for t in ids)
    assert not ts.stopped and sent == "Pari"  # "s is" held back: it may become the stop string
    assert ts.finish() == ""
    assert ts.stopped


# ---- property: streaming with stop strings equals cutting the text at the first stop ---------

ALPHABET = sorted(set("".join(CORPUS)) - {"\r"})
texts = st.text(alphabet=st.sampled_from(ALPHABET), min_size=1, max_size=40).filter(lambda s: not s.startswith(" "))


def reference(tok: Any, ids: Sequence[int], stops: Sequence[str]) -> tuple[str, bool]:
    """The text a client must get: the detokenized text up to the earliest stop string, looked
    for after each token (generation ends at the first token that completes one)."""
    stops = [s for s in stops if s]
    d = tok.detokenizer
    for t in [*ids, None]:
        if t is None:
            d.finalize()
        else:
            d.add_token(t)
        hits = [i for s in stops if (i := d.text.find(s)) >= 0]
        if hits:
            return d.text[: min(hits)], True
    return d.text, False


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data(), text=texts)
def test_streaming_matches_the_reference(tok: Any, data: st.DataObject, text: str) -> None:
    # stop strings: substrings of the text (so they hit), near misses and random strings
    def substring(s: str) -> st.SearchStrategy[str]:
        return st.integers(0, len(s)).flatmap(lambda i: st.integers(i, min(len(s), i + 6)).map(lambda j: s[i:j]))

    stop_strategy = (
        substring(text)
        | substring(text).map(lambda s: s + "§")
        | st.text(alphabet=st.sampled_from(ALPHABET), max_size=4)
    )
    stops = data.draw(st.lists(stop_strategy, max_size=4))
    ids = encode(tok, text)
    ts = TextStream(tok.detokenizer, stops)
    expected, should_stop = reference(tok, ids, stops)
    sent = ""
    for t in ids:
        sent += ts.push(t)
        assert expected.startswith(sent), (sent, expected, stops)  # nothing past the cut, ever
    sent += ts.finish()
    assert sent == expected, (text, stops)
    assert ts.stopped is should_stop
    sent.encode("utf-8")


# ---- _held_tail --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "stops", "held"),
    [
        ("hello wor", 0, ["world"], 3),
        ("hello w", 0, ["world"], 1),
        ("hello", 0, ["world"], 0),
        ("hello world", 0, ["world"], 0),  # a whole stop string is not a *proper* prefix
        ("abc", 0, ["abc"], 0),
        ("xab", 0, ["abc"], 2),
        ("xab", 2, ["abc"], 0),  # only the text from start on counts ("b" is no prefix)
        ("xxa", 2, ["abc"], 1),
        ("xab", 3, ["abc"], 0),  # nothing after start
        ("", 0, ["abc"], 0),
        ("xab", 0, [], 0),
        ("xa", 0, ["a"], 0),  # one-character stop strings have no proper prefix
        ("..ab", 0, ["b!", "abc"], 2),  # the longest over all stop strings
        ("..ab", 0, ["abc", "b!"], 2),
        ("aaa", 0, ["aaab"], 3),
        ("aaa", 0, ["aab"], 2),
        ("x東", 0, ["東京"], 1),
        ("x🚀", 0, ["🚀🔥"], 1),
    ],
)
def test_held_tail(text: str, start: int, stops: list[str], held: int) -> None:
    assert _held_tail(text, start, stops) == held


@given(
    text=st.text(alphabet="ab東", max_size=12),
    start=st.integers(0, 12),
    stops=st.lists(st.text(alphabet="ab東", min_size=1, max_size=5), max_size=4),
)
def test_held_tail_is_the_longest_suffix_that_is_a_proper_stop_prefix(text: str, start: int, stops: list[str]) -> None:
    start = min(start, len(text))
    tail = text[start:]
    brute = max(
        (
            k
            for s in stops
            for k in range(0, min(len(s) - 1, len(tail)) + 1)
            if tail.endswith(s[:k]) and (k == 0 or tail[-k:] == s[:k])
        ),
        default=0,
    )
    assert _held_tail(text, start, stops) == brute
