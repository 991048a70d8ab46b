"""The benchmark's statistics: percentiles, inter-token latency from chunk arrivals (spreading
coalesced chunks), per-request and aggregate tok/s, errors."""

from __future__ import annotations

import math
import statistics

from hypothesis import given
from hypothesis import strategies as st

from gateway.bench.stats import RequestResult, percentile, summarize, summarize_prefix, token_gaps

floats = st.floats(min_value=0, max_value=1e3, allow_nan=False)


@given(st.lists(floats, min_size=2, max_size=50))
def test_percentile_matches_linear_interpolation(xs: list[float]) -> None:
    cuts = statistics.quantiles(xs, n=100, method="inclusive")  # the 1st..99th percentiles
    for p in (1, 50, 99):
        assert math.isclose(percentile(xs, p), cuts[p - 1], rel_tol=1e-9, abs_tol=1e-9)
    assert percentile(xs, 0) == min(xs) and percentile(xs, 100) == max(xs)
    assert percentile(xs, 50) <= percentile(xs, 99)


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([3.0], 99) == 3.0


def test_one_token_per_chunk_gives_the_plain_gaps() -> None:
    chunks = [(1.0, 3), (1.5, 2), (1.75, 4), (2.5, 1)]
    assert token_gaps(chunks, tokens=4) == [0.5, 0.25, 0.75]


def test_a_coalesced_chunk_spreads_its_gap_over_its_tokens() -> None:
    # the last chunk carries three tokens (three times the text): its 0.6 s gap is three 0.2 s gaps
    chunks = [(0.0, 2), (0.1, 2), (0.7, 6)]
    gaps = token_gaps(chunks, tokens=5)
    assert len(gaps) == 4
    assert gaps[0] == 0.1 and all(math.isclose(g, 0.2) for g in gaps[1:])


@given(
    st.lists(st.tuples(st.floats(min_value=0, max_value=10), st.integers(0, 20)), min_size=2, max_size=30),
    st.integers(0, 100),
)
def test_spread_gaps_number_one_per_token_and_add_up(raw: list[tuple[float, int]], extra: int) -> None:
    times = sorted(t for t, _ in raw)
    chunks = [(t, c) for t, (_, c) in zip(times, raw)]
    tokens = len(chunks) + extra
    gaps = token_gaps(chunks, tokens)
    assert len(gaps) == tokens - 1
    assert math.isclose(sum(gaps), chunks[-1][0] - chunks[0][0], rel_tol=1e-9, abs_tol=1e-9)


def test_too_few_chunks_give_no_gaps() -> None:
    assert token_gaps([], 0) == [] and token_gaps([(1.0, 5)], 4) == []


def _request(start: float, times: list[float], tokens: int | None = None) -> RequestResult:
    return RequestResult(start=start, end=times[-1], chunks=[(t, 1) for t in times], completion_tokens=tokens)


def test_request_metrics() -> None:
    r = _request(0.0, [0.5, 0.6, 0.7, 0.9], tokens=5)  # usage says one more token than chunks
    assert r.ok and r.tokens == 5
    assert r.ttft == 0.5
    assert math.isclose(r.decode_tps() or 0, 4 / 0.4)
    assert RequestResult(start=0.0, chunks=[(1.0, 1)]).decode_tps() is None


def test_summary_aggregates_and_counts_errors() -> None:
    good = [_request(0.0, [0.2, 0.3, 0.4], 3), _request(0.0, [0.4, 0.6, 1.0], 3)]
    bad = [RequestResult(start=0.0, end=0.1, error="HTTP 503: busy"), RequestResult(start=0.0, end=0.1)]
    s = summarize("concurrent", 4, good + bad, wall=2.0, health=[0.001, 0.002, 0.003])
    assert s["requests"] == 4 and s["completion_tokens"] == 6
    assert s["aggregate_tps"] == 6 / 2.0
    assert s["errors"] == {"count": 2, "first": "HTTP 503: busy"}
    assert math.isclose(s["ttft_ms"]["p50"], 300.0)
    assert s["ttft_ms"]["p50"] <= s["ttft_ms"]["p99"] and s["itl_ms"]["p50"] <= s["itl_ms"]["p99"]
    assert math.isclose(s["decode_tps_median"], statistics.median([2 / 0.2, 2 / 0.6]))
    assert math.isclose(s["health_ms"]["p50"], 2.0) and s["health_ms"]["samples"] == 3


def test_summary_with_nothing_measured() -> None:
    s = summarize("single", 1, [RequestResult(start=0.0, error="boom")], wall=0.0, health=None)
    assert s["ttft_ms"] == {"p50": None, "p99": None} and s["aggregate_tps"] is None and s["health_ms"] is None


def test_prefix_summary_ratio() -> None:
    cold = _request(0.0, [2.0, 2.1])
    warm = [_request(0.0, [t, t + 0.1]) for t in (0.2, 0.4, 0.3)]
    s = summarize_prefix(cold, warm, health=[])
    assert math.isclose(s["cold_ttft_ms"], 2000.0) and math.isclose(s["warm_ttft_ms"]["p50"], 300.0)
    assert math.isclose(s["cold_warm_ratio"], 2000.0 / 300.0)
    assert s["errors"]["count"] == 0
