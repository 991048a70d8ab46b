"""The worker's memory figures and the memory ceiling's decisions (worker/memory.py), and how
the gateway adds them up (gateway/memory.py)."""

from __future__ import annotations

import os
import sys

import mlx.core as mx
import pytest

from gateway.memory import held, memory_kinds, reported, reported_total
from shared.config import ConfigError, ModelConfig, validate_model
from shared.protocol import Heartbeat
from worker import memory
from worker.memory import RESUME_AT, Action, Phase, decide

GiB = 1 << 30
CEILING = 4 * GiB


def test_no_ceiling_or_no_reading_never_acts() -> None:
    for phase in Phase:
        assert decide(phase, 100 * GiB, 0) is Action.STAY
        assert decide(phase, 0, CEILING) is Action.STAY


def test_under_the_ceiling_a_serving_worker_stays() -> None:
    assert decide(Phase.SERVING, CEILING, CEILING) is Action.STAY  # at the ceiling is not over it
    assert decide(Phase.SERVING, CEILING // 2, CEILING) is Action.STAY


def test_over_the_ceiling_it_trims_first_then_restarts_if_still_over() -> None:
    assert decide(Phase.SERVING, CEILING + 1, CEILING) is Action.TRIM
    assert decide(Phase.SHEDDING, CEILING + 1, CEILING, just_trimmed=True) is Action.RESTART
    assert decide(Phase.SHEDDING, CEILING + 1, CEILING) is Action.TRIM  # shedding, over again: trim again


def test_a_trim_that_worked_keeps_shedding_until_well_under() -> None:
    between = int(CEILING * (1 + RESUME_AT) / 2)
    assert decide(Phase.SHEDDING, between, CEILING, just_trimmed=True) is Action.STAY
    assert decide(Phase.SHEDDING, between, CEILING) is Action.STAY
    assert decide(Phase.SHEDDING, int(CEILING * RESUME_AT), CEILING) is Action.RESUME
    assert decide(Phase.SHEDDING, CEILING // 4, CEILING, just_trimmed=True) is Action.RESUME


def test_a_leaving_worker_does_nothing_more() -> None:
    assert decide(Phase.LEAVING, 10 * CEILING, CEILING) is Action.STAY
    assert decide(Phase.LEAVING, 10 * CEILING, CEILING, just_trimmed=True) is Action.STAY


def test_cache_limit_is_sized_from_the_budget_and_clamped() -> None:
    assert memory.cache_limit(None, 10 * GiB) == GiB
    assert memory.cache_limit(None, 100 << 20) == memory.CACHE_MIN
    assert memory.cache_limit(None, 1000 * GiB) == memory.CACHE_MAX
    assert memory.cache_limit(0, 10 * GiB) == 0  # configured: no cache at all
    assert memory.cache_limit(123, 10 * GiB) == 123


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_footprint_is_this_process_rss() -> None:
    with open("/proc/self/status") as f:
        vmrss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert abs(memory.footprint() - vmrss) <= 0.02 * vmrss
    assert memory.linux_rss(os.getpid()) == pytest.approx(vmrss, rel=0.02)
    assert memory.linux_rss(2**22 + 12345) == 0  # no such process


def test_footprint_sees_what_mlx_allocates() -> None:
    memory.release(heap=True)  # buffers earlier tests freed would be reused without touching new pages
    before = memory.read()
    a = mx.ones((64, 1 << 20), dtype=mx.uint8)  # 64 MiB
    mx.eval(a)
    after = memory.read()
    assert after.active - before.active >= 64 << 20
    assert after.footprint - before.footprint >= 60 << 20
    assert after.peak >= after.active
    del a
    memory.release()
    assert memory.read().cache == 0


def test_the_gateway_adds_up_reported_figures() -> None:
    a = Heartbeat(memory_bytes=900, mlx_active_bytes=500, mlx_cache_bytes=100, mlx_peak_bytes=700)
    b = Heartbeat(memory_bytes=1100, mlx_active_bytes=600, mlx_cache_bytes=0, mlx_peak_bytes=800)
    assert reported(None) == dict.fromkeys(("memory_bytes", "mlx_active_bytes", "mlx_cache_bytes", "mlx_peak_bytes"))
    assert reported(a)["memory_bytes"] == 900
    assert reported_total([a, None, b]) == {
        "memory_bytes": 2000,
        "mlx_active_bytes": 1100,
        "mlx_cache_bytes": 100,
        "mlx_peak_bytes": 1500,
    }
    assert reported_total([None])["memory_bytes"] is None
    assert memory_kinds([a, b]) == [("footprint", 2000), ("mlx_active", 1100), ("mlx_cache", 100), ("mlx_peak", 1500)]
    assert memory_kinds([None]) == []


def test_the_budget_counts_the_larger_of_estimate_and_footprint() -> None:
    assert held(1000, [None]) == 1000  # nothing reported yet
    assert held(1000, [Heartbeat(memory_bytes=400)]) == 1000
    assert held(1000, [Heartbeat(memory_bytes=700), Heartbeat(memory_bytes=700)]) == 1400


def test_memory_settings_are_validated() -> None:
    validate_model(ModelConfig("m", "/x", memory_ceiling="6GiB", cache_limit_bytes=0))
    assert ModelConfig("m", "/x", memory_ceiling="6GiB").memory_ceiling_bytes() == 6 * GiB
    with pytest.raises(ConfigError, match="memory_ceiling"):
        validate_model(ModelConfig("m", "/x", memory_ceiling="lots"))
    with pytest.raises(ConfigError, match="cache_limit_bytes"):
        validate_model(ModelConfig("m", "/x", cache_limit_bytes=-1))
