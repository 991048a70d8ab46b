"""A live progress line on stderr: one counter rewritten in place on a terminal, plain lines
(at most one every few seconds, plus one per finished step) when stderr is a file or a pipe."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from gateway.bench.stats import RequestResult


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.out = stream or sys.stderr
        self.tty = self.out.isatty()
        self.quiet = quiet
        self.label = ""
        self.total = self.done = self.tokens = self.errors = 0
        self._t0 = self._last = 0.0

    def start(self, label: str, total: int) -> None:
        """A new step (e.g. "hearth concurrent x4") of ``total`` requests (0: not known)."""
        self.label, self.total = label, total
        self.done = self.tokens = self.errors = 0
        self._t0 = self._last = time.monotonic()
        if self.tty:
            self._show(force=True)

    def add(self, result: RequestResult) -> None:
        self.done += 1
        self.tokens += result.tokens if result.ok else 0
        self.errors += not result.ok
        self._show()

    def finish(self) -> None:
        self._show(force=True)
        if self.tty and not self.quiet:
            self.out.write("\n")
            self.out.flush()

    def note(self, text: str) -> None:
        """A line of its own (model loading, a server being skipped, ...)."""
        if not self.quiet:
            self.out.write(f"{text}\n")
            self.out.flush()

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.quiet or (not force and now - self._last < (0.1 if self.tty else 5.0)):
            return
        self._last = now
        secs = now - self._t0
        line = (
            f"{self.label}: {self.done}{f'/{self.total}' if self.total else ''} requests, {self.tokens} tokens"
            f" ({self.tokens / secs if secs > 0 else 0:.1f} tok/s), {self.errors} errors, {secs:.0f}s"
        )
        self.out.write(f"\r{line}\x1b[K" if self.tty else f"{line}\n")
        self.out.flush()
