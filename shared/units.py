"""Durations and sizes as people write them in a config or a request ("5m", "16GiB").

Pure parsing, shared by the configuration (checked once at start) and the gateway (the
per-request ``keep_alive``), so both accept exactly the same spellings.
"""

from __future__ import annotations

import math
import re

FOREVER = math.inf

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like "30s", "5m", "1h30m", "250ms".

    A negative number, "-1" or "forever" means never (``FOREVER``, infinity); 0 means at once.
    Raises ``ValueError`` with a message fit for the user otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a duration (seconds, or a string like '30s', '5m', '1h')")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("forever", "never", "inf"):
            return FOREVER
        try:
            value = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"{value!r} is not a duration (seconds, or a string like '30s', '5m', '1h', 'forever')"
                ) from None
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if math.isnan(value):
        raise ValueError("a duration can't be NaN")
    return FOREVER if value < 0 else float(value)


def parse_size(value: object) -> int:
    """Bytes from a number of bytes or a string like "16GiB", "512 MiB", "8GB" (G alone = GiB)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a size (bytes, or a string like '16GiB')")
    if isinstance(value, str):
        m = _SIZE.fullmatch(value.strip().lower())
        if not m or m.group(2) not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size (bytes, or a string like '512MiB', '16GiB', '8GB')")
        return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if value < 0 or math.isnan(value):
        raise ValueError(f"a size must be >= 0, got {value!r}")
    return int(value)


def format_size(n: int | float | None) -> str:
    """A byte count for people: "1.5 GiB", "300 MiB"."""
    if n is None:
        return "-"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def format_duration(seconds: float | None) -> str:
    """Seconds for people: "forever", "4m 10s", "2h 5m"."""
    if seconds is None or seconds == FOREVER:
        return "forever"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"
