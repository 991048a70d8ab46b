"""OpenAI's output over the generation session: the whole response from the choices' results,
and the chunk stream (``data:`` lines, ``[DONE]``) from their events."""

from __future__ import annotations

from gateway import sse
from gateway.errors import HearthError
from gateway.openai.translate import ChatShape, Shape, usage
from gateway.session import Choice, Result
from shared.protocol import Delta, Done


def response(shape_cls: type[Shape], model: str, results: list[Result], want_lp: bool) -> dict[str, object]:
    shape = shape_cls(results[0].id, model)
    choices = [
        shape.choice(
            r.choice.index,
            r.text,
            r.done.finish_reason,
            r.logprobs if want_lp else None,
            r.tool_calls,
            "".join(d.reasoning for d in r.deltas),
            r.done.note,
        )
        for r in results
    ]
    return shape.response(choices, usage([(r.choice, r.done) for r in results]))


class ChunkStream:
    """A chat or text completion stream: the role chunks with the first event (chat), a chunk
    per delta (a tool call whole, in one chunk after the text before it), a finish chunk per
    choice, then the usage chunk if asked for and ``[DONE]``; SSE comments as keep-alives."""

    media_type = "text/event-stream"

    def __init__(self, shape_cls: type[Shape], model: str, n: int, want_lp: bool, include_usage: bool) -> None:
        self.headers: dict[str, str] = {}
        self.shape_cls = shape_cls
        self.model = model
        self.n = n
        self.want_lp = want_lp
        self.include_usage = include_usage
        self.shape: Shape | None = None
        self.started = False
        self.dones: list[tuple[Choice, Done]] = []

    def opening(self, rid: str) -> list[bytes]:
        self.shape = self.shape_cls(rid, self.model)
        return []

    def event(self, choice: Choice, ev: Delta | Done) -> list[bytes]:
        shape = self.shape
        assert shape is not None
        out = []
        if not self.started:
            self.started = True
            if isinstance(shape, ChatShape):
                out += [sse.event(shape.chunk(i, None, first=True)) for i in range(self.n)]
        if isinstance(ev, Delta):  # reasoning, text, then each tool call whole (Shape.delta_chunks)
            out += [sse.event(c) for c in shape.delta_chunks(choice.index, ev, self.want_lp)]
        else:
            self.dones.append((choice, ev))
            out.append(sse.event(shape.chunk(choice.index, None, finish=ev.finish_reason, note=ev.note)))
        return out

    def closing(self) -> list[bytes]:
        out = []
        if self.include_usage and self.shape is not None:
            out.append(sse.event(self.shape.usage_chunk(usage(self.dones))))
        return [*out, sse.DONE]

    def keepalive(self) -> bytes:
        return sse.KEEPALIVE

    def failure(self, err: HearthError) -> bytes:
        return sse.event(err.body())
