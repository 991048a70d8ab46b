"""Picking a worker for a request: the least loaded ready replica of the model.

Pure logic over a snapshot of the pool, so it is unit-tested without sockets. Prefix affinity
(send a conversation back to the replica that holds its KV cache) will slot in here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared.protocol import WorkerState


@dataclass(frozen=True)
class WorkerView:
    worker_id: str
    state: WorkerState
    inflight: int
    limit: int  # sequences it batches at once


def pick(workers: Iterable[WorkerView]) -> str | None:
    """The ready worker with the fewest requests in flight (ties: the first); None if none is ready."""
    ready = [w for w in workers if w.state is WorkerState.READY]
    if not ready:
        return None
    return min(ready, key=lambda w: w.inflight / max(w.limit, 1)).worker_id
