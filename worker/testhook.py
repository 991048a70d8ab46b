"""A test hook, off unless a test turns it on: a worker that dies because of one request.

The poison-request tests (tests/e2e/test_resume.py) need a request that kills every worker it
runs on, mid-stream. With ``HEARTH_TEST_EXIT_ON=<marker>`` in a worker's environment, a request
whose input contains the marker makes the worker exit at once (``os._exit``, no cleanup, as a
crash would) when it has generated ``HEARTH_TEST_EXIT_AFTER`` tokens (default 3) on this worker;
tokens forced by a resume do not count, so it dies again on every replacement. Nothing in
Hearth sets these variables; unset, ``exit_at`` is always 0 and nothing happens.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

EXIT_CODE = 70
_MARKER = os.environ.get("HEARTH_TEST_EXIT_ON", "")
_AFTER = int(os.environ.get("HEARTH_TEST_EXIT_AFTER", "3") or 3)


def exit_at(inp: dict[str, Any], forced: int) -> int:
    """The completion-token count at which this request kills its worker (0: never)."""
    if not _MARKER or _MARKER not in orjson.dumps(inp).decode():
        return 0
    return forced + _AFTER


def die() -> None:
    os._exit(EXIT_CODE)
