"""The console's Live figures (gateway/console/live.py): readings from a real prometheus-client
registry laid out as gateway/metrics.py lays it out, and the window's derivations."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.console.live import Reading, Window, quantile, read
from gateway.metrics import LATENCY_BUCKETS, Metrics


def test_a_reading_sums_the_gateways_metrics_over_models() -> None:
    m = Metrics()
    m.observe_done("a", {"prompt_tokens": 10, "completion_tokens": 4, "cached_tokens": 6})
    m.observe_done("b", {"prompt_tokens": 5, "completion_tokens": 1})
    m.ttft.labels("a").observe(0.02)
    m.ttft.labels("b").observe(0.3)
    m.in_flight.set(2)
    for _ in range(3):
        m.itl.labels("a").observe(0.01)
    r = read(m.registry.collect(), t=7.0)
    assert r.streamed_tokens == 2 + 3  # a first token each, three more of a
    assert (r.t, r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.in_flight) == (7.0, 15, 5, 6, 2)
    buckets = dict(r.ttft_buckets)
    assert buckets[0.025] == 1 and buckets[0.25] == 1 and buckets[0.5] == 2 and buckets[float("inf")] == 2
    assert [le for le, _ in r.ttft_buckets] == sorted(LATENCY_BUCKETS) + [float("inf")]


def test_a_reading_takes_the_models_gauges() -> None:
    reg = CollectorRegistry()
    running = Gauge("hearth_running_requests", "", ["model"], registry=reg)
    waiting = Gauge("hearth_waiting_requests", "", ["model"], registry=reg)
    restarts = Gauge("hearth_worker_restarts", "", ["model"], registry=reg)
    running.labels("a").set(3)
    running.labels("b").set(1)
    waiting.labels("a").set(2)
    restarts.labels("b").set(4)
    Counter("hearth_requests", "", registry=reg).inc(99)  # not a figure of the panel
    r = read(reg.collect(), t=0.0)
    assert (r.running, r.waiting, r.restarts, r.completion_tokens) == (4, 2, 4, 0)


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = [(0.1, 0.0), (0.2, 10.0), (0.4, 20.0), (float("inf"), 20.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.2)
    assert quantile(0.25, buckets) == pytest.approx(0.15)
    assert quantile(0.75, buckets) == pytest.approx(0.3)
    assert quantile(0.99, buckets) == pytest.approx(0.2 + 0.2 * 9.8 / 10)
    # in +Inf: the highest finite bound; no samples: no answer
    assert quantile(0.99, [(0.1, 1.0), (float("inf"), 10.0)]) == 0.1
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.5, []) is None


def test_quantiles_come_from_the_window_only() -> None:
    reg = CollectorRegistry()
    h = Histogram("hearth_time_to_first_token_seconds", "", ["model"], buckets=(0.1, 1.0), registry=reg)
    for _ in range(50):
        h.labels("a").observe(0.05)  # before the window's first reading: not counted
    w = Window()
    w.add(read(reg.collect(), t=0.0))
    for _ in range(4):
        h.labels("a").observe(0.5)
    w.add(read(reg.collect(), t=1.0))
    snap = w.snapshot()
    assert snap["ttft_count"] == 4
    assert snap["ttft_p50"] == pytest.approx(0.1 + 0.9 * 0.5)


def test_rates_series_and_hit_rate_from_differences() -> None:
    w = Window(horizon=300, interval=1)
    w.add(Reading(t=100.0, streamed_tokens=1000, prompt_tokens=500, cached_tokens=100, in_flight=0))
    w.add(Reading(t=101.0, streamed_tokens=1050, prompt_tokens=600, cached_tokens=150, in_flight=2, running=2))
    w.add(Reading(t=103.0, streamed_tokens=1250, prompt_tokens=700, cached_tokens=250, in_flight=1, restarts=1))
    snap = w.snapshot()
    assert snap["series"] == [
        {"t": -2.0, "tokens_per_s": 50.0, "in_flight": 2, "running": 2, "waiting": 0},
        {"t": 0.0, "tokens_per_s": 100.0, "in_flight": 1, "running": 0, "waiting": 0},
    ]
    assert snap["tokens_per_s"] == 100.0
    assert snap["cache_hit_rate"] == pytest.approx(150 / 200)
    assert snap["window_seconds"] == 3.0 and snap["restarts"] == 1
    assert snap["ttft_p50"] is None and snap["ttft_count"] == 0


def test_a_counter_that_went_back_is_not_a_negative_rate() -> None:
    w = Window()
    w.add(Reading(t=0.0, streamed_tokens=10))
    w.add(Reading(t=1.0, streamed_tokens=4))
    assert w.snapshot()["series"][0]["tokens_per_s"] == 0.0


def test_the_window_keeps_its_horizon_and_one_reading_before_it() -> None:
    w = Window(horizon=10, interval=1)
    for t in range(30):
        w.add(Reading(t=float(t), streamed_tokens=float(t)))
    ts = [r.t for r in w.readings]
    assert ts[0] == 19.0 and ts[-1] == 29.0 and len(ts) == 11
    assert len(w.snapshot()["series"]) == 10
    assert all(p["tokens_per_s"] == 1.0 for p in w.snapshot()["series"])


def test_a_reading_is_due_once_an_interval_has_passed() -> None:
    w = Window(interval=1.0)
    assert w.due(5.0)
    w.add(Reading(t=5.0))
    assert not w.due(5.5)
    assert w.due(5.95)


def test_an_empty_window_says_nothing_yet() -> None:
    snap = Window().snapshot()
    assert snap["series"] == [] and snap["ttft_p50"] is None and snap["cache_hit_rate"] is None
