"""What one request measured, and the numbers a scenario reports from many of them.

A streamed request is seen as the arrival times of its content chunks plus the server's final
``usage.completion_tokens``. Usually each chunk is one token. When a chunk carries several
(Hearth coalesces deltas for a client that reads slowly; a token that ends mid-character shows
up in the next chunk), the gap before that chunk is spread evenly over its tokens, so the
inter-token latency samples still number one per token and still add up to the decode time.
How many tokens a chunk carries is not on the wire: the tokens ``usage`` reports after the
first chunk are shared out among the later chunks in proportion to their text length, at least
one each.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestResult:
    """One request, timed with ``time.perf_counter`` (seconds)."""

    start: float
    end: float = 0.0
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (arrival, characters) per content chunk
    completion_tokens: int | None = None  # usage, when the server sent it
    prompt_tokens: int | None = None
    error: str | None = None
    drafted: int | None = None  # speculative decoding: draft tokens verified, when the server says
    accepted: int | None = None  # and of them accepted

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.chunks)

    @property
    def tokens(self) -> int:
        return max(self.completion_tokens or 0, len(self.chunks))

    @property
    def ttft(self) -> float:
        return self.chunks[0][0] - self.start

    def token_gaps(self) -> list[float]:
        return token_gaps(self.chunks, self.tokens)

    def decode_tps(self) -> float | None:
        """Tokens after the first, over the time from first to last chunk (None: too short to say)."""
        span = self.chunks[-1][0] - self.chunks[0][0] if self.chunks else 0.0
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else None


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by linear interpolation between closest ranks (numpy's
    default); NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    rank = (len(xs) - 1) * p / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def _apportion(total: int, weights: list[int]) -> list[int]:
    """``total`` split into integers in proportion to ``weights`` (largest remainders first)."""
    wsum = sum(weights)
    if wsum <= 0:
        weights, wsum = [1] * len(weights), len(weights)
    exact = [total * w / wsum for w in weights]
    out = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(out)), key=lambda i: exact[i] - out[i], reverse=True)
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


def token_gaps(chunks: list[tuple[float, int]], tokens: int) -> list[float]:
    """Inter-token latencies (seconds) from chunk arrivals: one sample per token after the first
    chunk. A chunk carrying ``n`` tokens contributes its gap divided by ``n``, ``n`` times."""
    if len(chunks) < 2:
        return []
    later = chunks[1:]
    total = max(tokens - 1, len(later))
    counts = [max(1, n) for n in _apportion(total, [c for _, c in later])]
    while sum(counts) > total:  # giving every chunk at least its one token overshot
        counts[counts.index(max(counts))] -= 1
    gaps: list[float] = []
    for (prev, _), (t, _), n in zip(chunks, later, counts):
        gaps += [(t - prev) / n] * n
    return gaps


def _pcts(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    """p50 and p99 (in ms by default); None when there is nothing to measure."""
    if not values:
        return {"p50": None, "p99": None}
    return {"p50": percentile(values, 50) * scale, "p99": percentile(values, 99) * scale}


def summarize(
    scenario: str, clients: int, results: list[RequestResult], wall: float, health: list[float] | None
) -> dict[str, Any]:
    """The report for one scenario run: ``wall`` is the time from the first request's start to
    the last one's end; ``health`` the /health round trips measured meanwhile (None: not probed)."""
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    gaps = [g for r in ok for g in r.token_gaps()]
    decode = [d for r in ok if (d := r.decode_tps()) is not None]
    tokens = sum(r.tokens for r in ok)
    prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    drafted = sum(r.drafted or 0 for r in ok)
    return {
        "scenario": scenario,
        "clients": clients,
        "requests": len(results),
        "completion_tokens": tokens,
        "prompt_tokens_mean": statistics.fmean(prompt) if prompt else None,
        "wall_s": wall,
        "ttft_ms": _pcts([r.ttft for r in ok]),
        "itl_ms": _pcts(gaps),
        "decode_tps_median": statistics.median(decode) if decode else None,
        "aggregate_tps": tokens / wall if wall > 0 else None,
        "acceptance": sum(r.accepted or 0 for r in ok) / drafted if drafted else None,
        "errors": {"count": len(failed), "first": next((r.error or "no tokens" for r in failed), None)},
        "health_ms": None if health is None else {**_pcts(health), "samples": len(health)},
    }


def summarize_prefix(cold: RequestResult, warm: list[RequestResult], health: list[float] | None) -> dict[str, Any]:
    """Cold vs warm time to first token for chats sharing one long system prompt."""
    runs = [cold, *warm]
    failed = [r for r in runs if not r.ok]
    warm_ttft = [r.ttft for r in warm if r.ok]
    cold_ms = cold.ttft * 1000 if cold.ok else None
    warm_p50 = percentile(warm_ttft, 50) * 1000 if warm_ttft else None
    return {
        "scenario": "prefix",
        "clients": 1,
        "requests": len(runs),
        "prompt_tokens_cold": cold.prompt_tokens,
        "cold_ttft_ms": cold_ms,
        "warm_ttft_ms": _pcts(warm_ttft),
        "cold_warm_ratio": cold_ms / warm_p50 if cold_ms and warm_p50 else None,
        "errors": {"count": len(failed), "first": next((r.error or "no tokens" for r in failed), None)},
        "health_ms": None if health is None else {**_pcts(health), "samples": len(health)},
    }
