"""Which models stay loaded: keep-alive expiry, least-recently-used eviction and the limits.

Pure decisions over snapshots (``Resident``), so they are unit-tested without processes; the
supervisor (gateway/supervisor.py) gathers the snapshots and carries the decisions out.

- A model is *idle* when no request for it runs or waits. An idle, ready model whose
  keep-alive has run out since it was last used (or became ready) is unloaded, unless pinned.
- Loading a model that would break ``max_loaded_models`` or ``memory_budget`` first evicts the
  least recently used idle, ready, unpinned models, just enough of them; if even all of those
  would not make room, nothing is evicted and the load waits (the caller says why, naming the
  limit). A model whose own estimate exceeds the budget can never load.
- A model being unloaded still holds its memory until its workers have exited, so a load that
  needs that memory waits for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared.units import FOREVER, format_size


@dataclass(frozen=True)
class Limits:
    max_loaded: int = 0  # 0: no limit
    budget: int = 0  # bytes; 0: no limit


@dataclass(frozen=True)
class Resident:
    """A model with worker processes (loading, ready or being unloaded)."""

    name: str
    estimate: int  # bytes, all replicas
    last_used: float  # monotonic
    idle: bool = True  # no request running or waiting
    ready: bool = True  # loaded: a loading model is never evicted
    pinned: bool = False
    leaving: bool = False  # being unloaded; still holds memory until its workers exit


@dataclass(frozen=True)
class Plan:
    victims: tuple[str, ...] = ()  # unload these (least recently used first)
    wait: str | None = None  # why the load can't start yet (None: start it now)
    never: str | None = None  # why it can never be loaded


def expires_at(last_used: float, ready_since: float, keep_alive: float) -> float:
    """When an idle model's keep-alive runs out (``FOREVER`` for never)."""
    if keep_alive == FOREVER:
        return FOREVER
    return max(last_used, ready_since) + keep_alive


def _fits(models: Iterable[Resident], estimate: int, limits: Limits) -> bool:
    models = list(models)
    if limits.max_loaded and len(models) + 1 > limits.max_loaded:
        return False
    return not limits.budget or sum(m.estimate for m in models) + estimate <= limits.budget


def _why_not(name: str, estimate: int, staying: Sequence[Resident], limits: Limits) -> str:
    held = ", ".join(m.name for m in staying) or "nothing"
    if limits.max_loaded and len(staying) + 1 > limits.max_loaded:
        return f"max_loaded_models = {limits.max_loaded} is reached and the loaded models ({held}) are busy or pinned"
    used = sum(m.estimate for m in staying)
    return (
        f"memory_budget {format_size(limits.budget)} would be exceeded: '{name}' needs {format_size(estimate)} "
        f"and {format_size(used)} is held by models that are busy or pinned ({held})"
    )


def never_fits(name: str, estimate: int, limits: Limits) -> str | None:
    if limits.budget and estimate > limits.budget:
        return (
            f"'{name}' needs an estimated {format_size(estimate)}, more than the whole "
            f"memory_budget of {format_size(limits.budget)}"
        )
    return None


def plan_load(name: str, estimate: int, residents: Sequence[Resident], limits: Limits) -> Plan:
    """What loading ``name`` (``estimate`` bytes) takes, given the other resident models."""
    never = never_fits(name, estimate, limits)
    if never:
        return Plan(never=never)
    staying = [m for m in residents if not m.leaving and m.name != name]
    candidates = sorted(
        (m for m in staying if m.idle and m.ready and not m.pinned), key=lambda m: (m.last_used, m.name)
    )
    victims: list[str] = []
    for m in candidates:
        if _fits(staying, estimate, limits):
            break
        staying.remove(m)
        victims.append(m.name)
    if not _fits(staying, estimate, limits):
        return Plan(wait=_why_not(name, estimate, staying, limits))
    if _fits([m for m in residents if m.name != name], estimate, limits):
        return Plan(tuple(victims))  # room now (then victims is empty: everything fit already)
    leaving = [m.name for m in residents if m.leaving and m.name != name] + victims
    return Plan(tuple(victims), wait=f"waiting for {', '.join(leaving)} to unload")


def due(residents: Iterable[tuple[Resident, float]], now: float) -> list[str]:
    """The idle, ready, unpinned models whose keep-alive (expiry time given beside each) ran out."""
    return [
        m.name for m, expiry in residents if m.idle and m.ready and not m.pinned and not m.leaving and now >= expiry
    ]


def startup_problem(always: Sequence[tuple[str, int]], limits: Limits) -> str | None:
    """Why the models that must be resident together (preloaded or pinned) can't be, if so."""
    for name, est in always:
        never = never_fits(name, est, limits)
        if never:
            return never
    names = ", ".join(n for n, _ in always)
    if limits.max_loaded and len(always) > limits.max_loaded:
        return (
            f"{len(always)} models are preloaded or pinned ({names}), more than max_loaded_models = {limits.max_loaded}"
        )
    total = sum(e for _, e in always)
    if limits.budget and total > limits.budget:
        return (
            f"the preloaded and pinned models ({names}) need an estimated {format_size(total)}, "
            f"more than memory_budget {format_size(limits.budget)}"
        )
    return None
