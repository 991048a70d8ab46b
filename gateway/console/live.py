"""The console's Live panel, derived from the gateway's own metrics: pure, so it is unit-tested.

The gateway's Prometheus registry (gateway/metrics.py) already counts tokens, time to first
token, prompt-cache hits, requests in flight and restarts. Tokens per second are the tokens
*streamed*: one time-to-first-token and one inter-token-latency observation per token, made as
each delta arrives (gateway/streams.py), so the chart moves while generations run, not only when
they end (the completion-token counter grows at each request's end). ``read`` reduces one collection of it
(through prometheus-client's public ``collect``) to a ``Reading``; a ``Window`` keeps the
readings of the last few minutes and turns them into what the page draws: tokens per second and
requests in flight per interval, and TTFT quantiles and the cache hit rate over the window
(from the differences of the counters and histogram buckets between its oldest and newest
reading, as PromQL's ``rate`` and ``histogram_quantile`` would). The browser never parses
``/metrics`` text.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric

HORIZON = 300.0  # seconds of history the charts show
INTERVAL = 1.0  # seconds between readings (and between the events of the stream)


@dataclass(frozen=True)
class Reading:
    """The gateway-wide totals at one moment (summed over models)."""

    t: float  # monotonic seconds
    streamed_tokens: float = 0.0  # tokens that arrived from workers (TTFT + ITL observations)
    completion_tokens: float = 0.0
    prompt_tokens: float = 0.0
    cached_tokens: float = 0.0
    ttft_buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count), +Inf last
    in_flight: float = 0.0  # API requests being answered
    running: float = 0.0  # requests decoding in workers
    waiting: float = 0.0  # requests waiting for a worker or a batch slot
    restarts: float = 0.0  # worker exits the supervisor restarted, since the start


_SUMS = {
    "hearth_completion_tokens_total": "completion_tokens",
    "hearth_prompt_tokens_total": "prompt_tokens",
    "hearth_prompt_cache_hit_tokens_total": "cached_tokens",
    "hearth_http_requests_in_flight": "in_flight",
    "hearth_running_requests": "running",
    "hearth_waiting_requests": "waiting",
    "hearth_worker_restarts": "restarts",
}
_STREAMED = ("hearth_time_to_first_token_seconds_count", "hearth_inter_token_latency_seconds_count")
_TTFT_BUCKET = "hearth_time_to_first_token_seconds_bucket"


def read(families: Iterable[Metric], t: float) -> Reading:
    """One ``Reading`` from the metric families of a registry's ``collect()``."""
    sums = dict.fromkeys([*_SUMS.values(), "streamed_tokens"], 0.0)
    buckets: dict[float, float] = {}
    for family in families:
        for s in family.samples:
            if s.name in _SUMS:
                sums[_SUMS[s.name]] += s.value
            elif s.name in _STREAMED:
                sums["streamed_tokens"] += s.value
            elif s.name == _TTFT_BUCKET:
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
    return Reading(t=t, ttft_buckets=tuple(sorted(buckets.items())), **sums)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram (Prometheus' ``histogram_quantile``: linear
    within the bucket; the highest finite bound when it falls in +Inf). None without samples."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def _bucket_delta(new: Reading, old: Reading) -> list[tuple[float, float]]:
    before = dict(old.ttft_buckets)
    return [(le, max(0.0, count - before.get(le, 0.0))) for le, count in new.ttft_buckets]


@dataclass
class Window:
    """The readings of the last ``horizon`` seconds, one per ``interval`` at most."""

    horizon: float = HORIZON
    interval: float = INTERVAL
    readings: deque[Reading] = field(default_factory=deque)

    def due(self, now: float) -> bool:
        return not self.readings or now - self.readings[-1].t >= self.interval * 0.9

    def add(self, reading: Reading) -> None:
        self.readings.append(reading)
        # the oldest kept is the last one at or before the horizon: the first interval starts there
        while len(self.readings) > 2 and reading.t - self.readings[1].t >= self.horizon:
            self.readings.popleft()

    def snapshot(self) -> dict[str, Any]:
        """What one event of the stream carries (times in seconds before the newest reading)."""
        if not self.readings:
            return {"series": [], "ttft_p50": None, "ttft_p99": None, "cache_hit_rate": None, "restarts": 0}
        last = self.readings[-1]
        series = []
        pairs = list(zip(list(self.readings)[:-1], list(self.readings)[1:]))
        for old, new in pairs:
            dt = new.t - old.t
            if dt <= 0:
                continue
            series.append(
                {
                    "t": round(new.t - last.t, 2),
                    "tokens_per_s": round(max(0.0, new.streamed_tokens - old.streamed_tokens) / dt, 2),
                    "in_flight": new.in_flight,
                    "running": new.running,
                    "waiting": new.waiting,
                }
            )
        first = self.readings[0]
        delta = _bucket_delta(last, first)
        prompt = last.prompt_tokens - first.prompt_tokens
        cached = last.cached_tokens - first.cached_tokens
        span = last.t - first.t
        return {
            "window_seconds": round(span, 1),
            "series": series,
            "ttft_p50": quantile(0.5, delta),
            "ttft_p99": quantile(0.99, delta),
            "ttft_count": int(delta[-1][1]) if delta else 0,
            "cache_hit_rate": round(cached / prompt, 4) if prompt > 0 else None,
            "tokens_per_s": series[-1]["tokens_per_s"] if series else 0.0,
            "completion_tokens": last.completion_tokens,
            "prompt_tokens": last.prompt_tokens,
            "in_flight": last.in_flight,
            "running": last.running,
            "waiting": last.waiting,
            "restarts": int(last.restarts),
        }
