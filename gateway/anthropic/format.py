"""Anthropic's output over the generation session: the whole ``message`` from the result, and
the event stream (``message_start``, the blocks' events, ``message_delta``, ``message_stop``)
from its events, with ``ping`` as the keep-alive and an ``error`` event for a failure."""

from __future__ import annotations

from typing import Any

from gateway import sse
from gateway.anthropic.translate import Blocks, MessageShape
from gateway.errors import HearthError, InvalidRequest, request_id
from gateway.session import Choice, Result
from shared.protocol import ERROR_CONTEXT_LENGTH, Delta, Done


def anthropic_error(err: HearthError) -> HearthError:
    """Say a too-long prompt the way Anthropic does ("prompt is too long"), which clients such as
    Claude Code recognise; other errors pass unchanged."""
    if err.code == ERROR_CONTEXT_LENGTH and not err.message.startswith("prompt is too long"):
        return InvalidRequest(f"prompt is too long: {err.message}", param=err.param, code=err.code)
    return err


def message(model: str, result: Result) -> dict[str, Any]:
    blocks = Blocks()
    for d in result.deltas:
        blocks.delta(d)
    blocks.finish()
    return MessageShape(result.id, model).message(blocks.content, result.done)


class EventStream:
    media_type = "text/event-stream"

    def __init__(self, model: str) -> None:
        self.headers = {"request-id": request_id(), "cache-control": "no-cache"}
        self.model = model
        self.shape: MessageShape | None = None
        self.blocks = Blocks()

    def opening(self, rid: str) -> list[bytes]:
        self.shape = MessageShape(rid, self.model)
        return [sse.named(*self.shape.start())]

    def event(self, choice: Choice, ev: Delta | Done) -> list[bytes]:
        assert self.shape is not None
        if isinstance(ev, Done):
            events = [*self.blocks.finish(), *self.shape.end(ev)]
        else:
            events = self.blocks.delta(ev)
        return [sse.named(name, data) for name, data in events]

    def closing(self) -> list[bytes]:
        return []

    def keepalive(self) -> bytes:
        return sse.named("ping", {"type": "ping"})

    def failure(self, err: HearthError) -> bytes:
        return sse.named("error", anthropic_error(err).anthropic_body())
