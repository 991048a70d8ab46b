"""A worker's memory: what the process really holds, MLX's own counters, the bound on MLX's
buffer cache, and what to do when the footprint passes the model's ``memory_ceiling``.

MLX keeps freed buffers for reuse (its buffer cache) and by default lets that cache grow up to
the memory limit, so a worker that served a few long prompts keeps their activations' memory
for good; ``mx.get_active_memory()`` does not count it, nor anything outside MLX (Python,
tokenizers, the allocator's own slack). So every figure Hearth shows or budgets with is the
process's footprint as the OS sees it (``footprint``: RSS on Linux, the physical footprint on
macOS, what Activity Monitor shows and what the OS's memory pressure acts on; on a CUDA GPU,
whose memory is not in RSS, the host's RSS plus MLX's device memory, active and cached, which
is an assumption not checked on a GPU yet), with MLX's active/cache/peak counters beside it.

``cache_limit`` sizes the buffer cache bound; the worker releases the cache whenever it goes
idle and on drain. ``decide`` is the ceiling's policy, a pure function: above the ceiling the
worker stops admitting and trims its caches (prompt cache and MLX's), and if it is still above,
drains and exits so the supervisor starts a fresh one while the gateway re-dispatches the
requests it turned away; back under ``RESUME_AT`` of the ceiling, it admits again.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from enum import StrEnum

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from worker.device import backend

CACHE_FRACTION = 0.1  # default buffer cache bound: a tenth of the model's budget ...
CACHE_MIN = 64 << 20  # ... but at least 64 MiB (one long prefill's activations) ...
CACHE_MAX = 2 << 30  # ... and at most 2 GiB
RESUME_AT = 0.9  # a shedding worker admits again once its footprint is under this share of the ceiling


@dataclass(frozen=True)
class Reading:
    """One look at the worker's memory, in bytes."""

    footprint: int  # what the OS charges the process (RSS / physical footprint); 0 if unknown
    active: int  # MLX: held by live arrays
    cache: int  # MLX: freed buffers kept for reuse
    peak: int  # MLX: the most ``active`` has been since start


def read() -> Reading:
    active, cache = int(mx.get_active_memory()), int(mx.get_cache_memory())
    host = footprint()
    if host and backend() == "cuda":  # device memory is not in the host's RSS: count both
        host += active + cache
    return Reading(host, active, cache, int(mx.get_peak_memory()))


def footprint() -> int:
    """The process's resident memory now: /proc/self/statm on Linux; on macOS the physical
    footprint from ``proc_pid_rusage`` (``ru_maxrss`` would be the peak, not the present)."""
    if sys.platform.startswith("linux"):
        return linux_rss(os.getpid())
    if sys.platform == "darwin":
        return _darwin_footprint()
    return 0


def linux_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` (Linux; 0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


class _RusageInfoV2(ctypes.Structure):
    """``struct rusage_info_v2`` of <sys/resource.h> (macOS)."""

    _fields_ = [
        ("ri_uuid", ctypes.c_uint8 * 16),
        *(
            (name, ctypes.c_uint64)
            for name in (
                "ri_user_time",
                "ri_system_time",
                "ri_pkg_idle_wkups",
                "ri_interrupt_wkups",
                "ri_pageins",
                "ri_wired_size",
                "ri_resident_size",
                "ri_phys_footprint",
                "ri_proc_start_abstime",
                "ri_proc_exit_abstime",
                "ri_child_user_time",
                "ri_child_system_time",
                "ri_child_pkg_idle_wkups",
                "ri_child_interrupt_wkups",
                "ri_child_pageins",
                "ri_child_elapsed_abstime",
                "ri_diskio_bytesread",
                "ri_diskio_byteswritten",
            )
        ),
    ]


_RUSAGE_INFO_V2 = 2
_libsystem: ctypes.CDLL | None = None


def _darwin_footprint() -> int:
    """``ri_phys_footprint`` of ``proc_pid_rusage`` (libSystem): the physical footprint, Metal
    buffers included, as Activity Monitor's Memory column and the kernel's pressure see it."""
    global _libsystem
    if _libsystem is None:
        _libsystem = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
        _libsystem.proc_pid_rusage.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        _libsystem.proc_pid_rusage.restype = ctypes.c_int
    info = _RusageInfoV2()
    if _libsystem.proc_pid_rusage(os.getpid(), _RUSAGE_INFO_V2, ctypes.byref(info)) != 0:
        return 0
    return int(info.ri_phys_footprint)


def cache_limit(configured: int | None, budget: int) -> int:
    """The bound on MLX's buffer cache: ``cache_limit_bytes`` when set (0: no cache at all), else
    ``CACHE_FRACTION`` of the model's budget (its weights plus its prompt cache), clamped."""
    if configured is not None:
        return configured
    return max(CACHE_MIN, min(CACHE_MAX, int(budget * CACHE_FRACTION)))


def model_bytes(model: nn.Module) -> int:
    """Bytes of a loaded model's parameters."""
    leaves: list[tuple[str, mx.array]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    return sum((int(v.nbytes) for _, v in leaves), 0)


def bound_cache(configured: int | None, budget: int) -> int:
    """Set MLX's buffer cache bound for this worker (``cache_limit`` of the model's ``budget``)
    and release what loading left in it; the bound set."""
    limit = cache_limit(configured, budget)
    mx.set_cache_limit(limit)
    release()
    return limit


def release(heap: bool = False) -> None:
    """Hand MLX's buffer cache back to the allocator (idle, drain, a trim). ``heap``: also ask
    glibc to return its free heap pages to the OS (``malloc_trim``; a few ms, so only when over
    the ceiling): freed small buffers otherwise stay in the process's RSS."""
    mx.clear_cache()
    if heap and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to ask
            pass


class Phase(StrEnum):
    SERVING = "serving"  # admitting requests
    SHEDDING = "shedding"  # over the ceiling: admits nothing, finishes what it runs
    LEAVING = "leaving"  # still over after a trim: draining, then exits for a fresh worker


class Action(StrEnum):
    STAY = "stay"  # nothing changes
    TRIM = "trim"  # stop admitting, trim the caches, then decide again on a fresh reading
    RESUME = "resume"  # admit again
    RESTART = "restart"  # drain and exit


def decide(phase: Phase, footprint: int, ceiling: int, just_trimmed: bool = False) -> Action:
    """What a worker in ``phase`` with ``footprint`` bytes does about ``ceiling`` (0: none).

    Over the ceiling a serving or shedding worker first trims (``TRIM``); if a fresh reading
    right after the trim is still over, it restarts. A shedding worker that is back under
    ``RESUME_AT`` of the ceiling admits again; between the two it keeps shedding while its
    running requests finish. An unknown footprint (0) never triggers anything."""
    if ceiling <= 0 or footprint <= 0 or phase is Phase.LEAVING:
        return Action.STAY
    if footprint > ceiling:
        return Action.RESTART if just_trimmed else Action.TRIM
    if phase is Phase.SHEDDING and footprint <= ceiling * RESUME_AT:
        return Action.RESUME
    return Action.STAY
