"""Picking a worker for a request: the least loaded ready replica of the model, unless the
replica that served the same conversation before (and so holds its KV prompt cache) is about
as free: then that one, so the next turn prefills only the new messages.

Pure logic over a snapshot of the pool, so it is unit-tested without sockets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from shared.protocol import WorkerState


@dataclass(frozen=True)
class WorkerView:
    worker_id: str
    state: WorkerState
    inflight: int
    limit: int  # sequences it batches at once


AFFINITY_SLACK = 1  # how many more requests in flight the conversation's own replica may have


def pick(workers: Iterable[WorkerView], preferred: str | None = None) -> str | None:
    """The ready worker with the fewest requests in flight (ties: the first), or ``preferred``
    when it is ready and at most ``AFFINITY_SLACK`` requests busier; None if none is ready."""
    ready = [w for w in workers if w.state is WorkerState.READY]
    if not ready:
        return None
    best = min(ready, key=lambda w: w.inflight / max(w.limit, 1))
    mine = next((w for w in ready if w.worker_id == preferred), None)
    if mine is not None and mine.inflight <= best.inflight + AFFINITY_SLACK:
        return mine.worker_id
    return best.worker_id


def affinity_key(inp: dict[str, Any]) -> str | None:
    """What stays the same across a conversation's turns: its messages up to the first user
    message (system prompt included) and its tools (templates render them first), or the start
    of a plain prompt."""
    messages = inp.get("messages")
    if isinstance(messages, list) and messages:
        end = next((i for i, m in enumerate(messages) if m.get("role") == "user"), len(messages) - 1)
        head: Any = messages[: end + 1]
        if inp.get("tools"):
            head = [inp["tools"], head]
    elif isinstance(inp.get("prompt"), str) and inp["prompt"]:
        head = inp["prompt"][:1024]
    else:
        return None
    return hashlib.blake2b(orjson.dumps(head), digest_size=8).hexdigest()
