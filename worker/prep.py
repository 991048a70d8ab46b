"""Rendering arrivals off the step thread, while the batch's step computes.

On a GPU the worker's step thread is the batch's pace: while it works on the host the device
waits for the next step. Each arriving chat cost that thread ~1.2 ms on the H200 host (its chat
template and tokenizing ~0.5 ms of it, the prompt-cache lookup ~0.6 ms; ``benchmarks/add_cost.py``),
one request after another, so a burst of 32 arrivals held every stream up for ~40 ms and the
last arrival waited for all the adds before it. MLX releases the GIL while it waits for the
device (``mx.eval``, ``tolist``), so a side thread renders a burst while the step computes, and
the step thread is left with the rest of the add.

Only the tokenizer's work moves (``EngineCore.render``): arrays MLX builds on another thread
belong to that thread's stream, so whatever makes arrays (the prompt-cache lookup, samplers,
grammars, the insert) stays on the step thread. Arrivals keep their order: one render thread,
taken first in, first out.

A rendered arrival is added a step after it was read, so rendering aside is used only where
arrivals wait that step anyway: where the engine holds arrivals for admission
(``admission_hold`` above 0, the GPU backends' rule; worker/admission.py), and not in a worker
group, whose ranks replay rank 0's
adds step by step (the core is told at read time that an arrival came, so the hold's "no new
arrival since the last step" rule sees the burst as it did). On the CPU a step costs its tokens,
an arrival is inserted at once, and a step's delay would be the CPU's ITL, so it renders inline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from shared.protocol import Generate


class Renderer:
    """Arrivals being rendered on one side thread, in the order they came."""

    def __init__(self, render: Callable[[Generate], Any]) -> None:
        self._render = render
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hearth-render")
        self._queue: deque[tuple[Generate, Future[Any]]] = deque()
        self._cancelled: set[str] = set()

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, req: Generate) -> None:
        self._queue.append((req, self._pool.submit(self._render, req)))

    def cancel(self, rid: str) -> bool:
        """Forget ``rid`` if it is still being rendered (it is then never added); False if not here."""
        if any(req.id == rid for req, _ in self._queue):
            self._cancelled.add(rid)
            return True
        return False

    def clear(self) -> None:
        """Forget every arrival here (a reconnect drops what the worker was running)."""
        self._cancelled.update(req.id for req, _ in self._queue)

    def take(self) -> Iterator[tuple[Generate, Callable[[], Any]]]:
        """Every arrival submitted so far, in order, waiting for those not rendered yet: each
        with a call that returns its rendering or raises what rendering raised."""
        while self._queue:
            req, fut = self._queue.popleft()
            if req.id in self._cancelled:
                self._cancelled.discard(req.id)
                fut.cancel()
                continue
            yield req, fut.result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
