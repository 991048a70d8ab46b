"""A Responses answer built from one generation's ``Delta``/``Done`` events: the stream's events
and the ``response`` object, by one builder so the two always agree item for item.

Pure: no sockets, no waiting. The endpoint feeds it the session's events and writes each event
it returns as SSE (``event: TYPE`` + ``data: JSON``); a non-streamed request feeds the same
events, drops them, and answers ``response()``.

Output items, in the order the model wrote them: ``reasoning`` (split-out reasoning text, when
the worker sends it), ``message`` (one ``output_text`` part; text that is only whitespace in
front of a function call is dropped, as chat completions drops it), ``function_call`` (each
call whole: one ``arguments`` delta). A generation that wrote nothing else still has one
(empty) message, so a client always finds its ``output_text``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from gateway import sse
from gateway.errors import HearthError
from gateway.responses.translate import split_name
from shared.protocol import Delta, Done

Event = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage(done: Done | None) -> dict[str, Any]:
    """OpenAI's Responses usage: cached prompt tokens and reasoning tokens broken out."""
    u = done.usage if done is not None else {}
    prompt, completion = u.get("prompt_tokens", 0), u.get("completion_tokens", 0)
    out: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": u.get("cached_tokens", 0)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": u.get("reasoning_tokens", 0)},
        "total_tokens": prompt + completion,
    }
    if done is not None and done.finish_reason == "loop":
        out["loop_guard"] = {"cycle_tokens": u.get("loop_cycle_tokens", 0), "repeats": u.get("loop_repeats", 0)}
    return out


class ResponseBuilder:
    """One response: feed ``start()``, then ``delta(d)`` for each Delta, then ``done(d)`` (or
    ``fail(err)``); each returns the stream events it makes, numbered in ``sequence_number``.

    ``echo`` is the request's part of the response object (model, instructions, tools,
    temperature …, see ``endpoints``); ``namespaces`` split a ``ns.f`` call back apart;
    ``logprobs`` puts the tokens' logprobs on the text (``include`` asked for them)."""

    def __init__(
        self,
        echo: dict[str, Any],
        namespaces: frozenset[str] = frozenset(),
        logprobs: bool = False,
        rid: str | None = None,
        created_at: int | None = None,
    ) -> None:
        self.id = rid or new_id("resp")
        self.echo = echo
        self.namespaces = namespaces
        self.logprobs = logprobs
        self.created_at = int(time.time()) if created_at is None else created_at
        self.status = "in_progress"
        self.output: list[dict[str, Any]] = []
        self.error: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None
        self.final: Done | None = None
        self._seq = 0
        self._message: dict[str, Any] | None = None  # the open message item
        self._text: list[str] = []  # its text so far
        self._held = ""  # whitespace not yet sent: dropped if a function call follows it
        self._held_lp: list[Any] = []
        self._reasoning: dict[str, Any] | None = None  # the open reasoning item
        self._reasoning_text: list[str] = []

    # -- the response object -----------------------------------------------------------------

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "error": self.error,
            "incomplete_details": self.incomplete,
            **self.echo,
            "output": [dict(item) for item in self.output],
            "usage": usage(self.final) if self.final is not None else None,
        }

    def output_text(self) -> str:
        return "".join(
            part.get("text", "")
            for item in self.output
            if item["type"] == "message"
            for part in item["content"]
            if part["type"] == "output_text"
        )

    # -- events ------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> Event:
        ev = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return ev

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response=self.response()),
            self._event("response.in_progress", response=self.response()),
        ]

    def delta(self, d: Delta) -> list[Event]:
        events: list[Event] = []
        if d.reasoning:  # split-out reasoning text (a model with think markers)
            events += self._reason(d.reasoning)
        if d.text or d.logprobs:
            events += self._close_reasoning()
            events += self._say(d.text, list(d.logprobs or []) if self.logprobs else [])
        for call in d.tool_calls or []:
            events += self._close_reasoning()
            events += self._close_message(drop_held=True)
            events += self._call(call)
        return events

    def done(self, d: Done) -> list[Event]:
        """The generation ended: close what is open; ``response.completed``, or
        ``response.incomplete`` when it ran out of ``max_output_tokens``."""
        events = self._close_reasoning()
        if self._held or not any(item["type"] in ("message", "function_call") for item in self.output):
            events += self._open_message()  # held whitespace (or nothing at all) is the answer
            events += self._say("", [])
        self.final = d
        if d.finish_reason == "length":
            self.status, self.incomplete = "incomplete", {"reason": "max_output_tokens"}
        else:
            self.status = "completed"
        events += self._close_message(drop_held=False)
        kind = "response.incomplete" if self.status == "incomplete" else "response.completed"
        return [*events, self._event(kind, response=self.response())]

    def fail(self, err: HearthError) -> list[Event]:
        """The generation failed after the stream began: an ``error`` event, then
        ``response.failed`` with the items as far as they got (marked incomplete)."""
        for item in self.output:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
        if self._message is not None:
            self._message["content"][0]["text"] = "".join(self._text)
        self._message = self._reasoning = None
        self.status = "failed"
        self.error = {"code": err.code or "server_error", "message": err.message}
        return [
            self._event("error", code=err.code, message=err.message, param=err.param),
            self._event("response.failed", response=self.response()),
        ]

    # -- text --------------------------------------------------------------------------------

    def _say(self, text: str, logprobs: list[Any]) -> list[Event]:
        if self._message is None and not (self._held + text).strip():
            self._held += text
            self._held_lp += logprobs
            return []
        events = self._open_message()
        text, logprobs = self._held + text, self._held_lp + logprobs
        self._held, self._held_lp = "", []
        if not text and not logprobs:
            return events
        msg = self._message
        assert msg is not None
        self._text.append(text)
        part = msg["content"][0]
        if self.logprobs:
            part["logprobs"].extend(logprobs)
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=msg["id"],
                output_index=self._index(msg),
                content_index=0,
                delta=text,
                logprobs=logprobs,
            )
        )
        return events

    def _open_message(self) -> list[Event]:
        if self._message is not None:
            return []
        msg: dict[str, Any] = {
            "id": new_id("msg"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        self.output.append(msg)
        self._message, self._text = msg, []
        part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        events = [self._event("response.output_item.added", output_index=self._index(msg), item=_copy(msg))]
        msg["content"].append(part)
        events.append(
            self._event(
                "response.content_part.added",
                item_id=msg["id"],
                output_index=self._index(msg),
                content_index=0,
                part=dict(part),
            )
        )
        return events

    def _close_message(self, drop_held: bool) -> list[Event]:
        if drop_held:
            self._held, self._held_lp = "", []
        msg = self._message
        if msg is None:
            return []
        self._message = None
        part = msg["content"][0]
        part["text"] = "".join(self._text)
        msg["status"] = "incomplete" if self.status == "incomplete" else "completed"
        i = self._index(msg)
        return [
            self._event(
                "response.output_text.done",
                item_id=msg["id"],
                output_index=i,
                content_index=0,
                text=part["text"],
                logprobs=list(part["logprobs"]),
            ),
            self._event(
                "response.content_part.done", item_id=msg["id"], output_index=i, content_index=0, part=dict(part)
            ),
            self._event("response.output_item.done", output_index=i, item=_copy(msg)),
        ]

    # -- function calls ----------------------------------------------------------------------

    def _call(self, call: dict[str, Any]) -> list[Event]:
        name, namespace = split_name(str(call.get("name", "")), self.namespaces)
        arguments = str(call.get("arguments", ""))
        item: dict[str, Any] = {
            "id": new_id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "call_id": str(call.get("id") or new_id("call")),
            "name": name,
            "arguments": "",
        }
        if namespace is not None:
            item["namespace"] = namespace
        self.output.append(item)
        i = self._index(item)
        events = [self._event("response.output_item.added", output_index=i, item=dict(item))]
        item["arguments"] = arguments
        item["status"] = "completed"
        events += [
            self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=i, delta=arguments),
            self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=i,
                name=name,
                arguments=arguments,
            ),
            self._event("response.output_item.done", output_index=i, item=dict(item)),
        ]
        return events

    # -- reasoning ---------------------------------------------------------------------------

    def _reason(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self._reasoning is None:
            events += self._close_message(drop_held=True)
            item: dict[str, Any] = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": []}
            self.output.append(item)
            self._reasoning, self._reasoning_text = item, []
            i = self._index(item)
            events.append(self._event("response.output_item.added", output_index=i, item=_copy(item)))
            part = {"type": "reasoning_text", "text": ""}
            item["content"].append(part)
            events.append(
                self._event(
                    "response.content_part.added", item_id=item["id"], output_index=i, content_index=0, part=dict(part)
                )
            )
        item = self._reasoning
        self._reasoning_text.append(text)
        events.append(
            self._event(
                "response.reasoning_text.delta",
                item_id=item["id"],
                output_index=self._index(item),
                content_index=0,
                delta=text,
            )
        )
        return events

    def _close_reasoning(self) -> list[Event]:
        item = self._reasoning
        if item is None:
            return []
        self._reasoning = None
        part = item["content"][0]
        part["text"] = "".join(self._reasoning_text)
        i = self._index(item)
        return [
            self._event(
                "response.reasoning_text.done", item_id=item["id"], output_index=i, content_index=0, text=part["text"]
            ),
            self._event(
                "response.content_part.done", item_id=item["id"], output_index=i, content_index=0, part=dict(part)
            ),
            self._event("response.output_item.done", output_index=i, item=_copy(item)),
        ]

    def _index(self, item: dict[str, Any]) -> int:
        for i, it in enumerate(self.output):
            if it is item:
                return i
        raise ValueError("item not in output")


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    """An item as it stands now (its content parts copied: they change as text comes)."""
    out = dict(item)
    if isinstance(item.get("content"), list):
        out["content"] = [dict(p) for p in item["content"]]
    return out


class ResponsesStream:
    """The Responses API's side of a streamed answer: each moment of the stream as SSE bytes
    (``event: TYPE`` + ``data: JSON``), from one ``ResponseBuilder``. ``finished`` is called
    with the builder once the response is whole (completed, incomplete or failed): the store
    keeps it then. ``rename`` turns an error into the Responses API's terms."""

    media_type = "text/event-stream"

    def __init__(
        self,
        builder: ResponseBuilder,
        headers: dict[str, str] | None = None,
        finished: Callable[[ResponseBuilder], None] | None = None,
        rename: Callable[[HearthError], HearthError] | None = None,
    ) -> None:
        self.builder = builder
        self.headers = {"cache-control": "no-cache", **(headers or {})}
        self._finished = finished
        self._rename = rename

    def opening(self, rid: str | None = None) -> list[bytes]:
        return _frames(self.builder.start())

    def event(self, choice: object, ev: Delta | Done) -> list[bytes]:
        if isinstance(ev, Delta):
            return _frames(self.builder.delta(ev))
        frames = _frames(self.builder.done(ev))
        self._end()
        return frames

    def closing(self) -> list[bytes]:
        return []

    def keepalive(self) -> bytes:
        return sse.KEEPALIVE

    def failure(self, err: HearthError) -> bytes:
        frames = _frames(self.builder.fail(self._rename(err) if self._rename else err))
        self._end()
        return b"".join(frames)

    def _end(self) -> None:
        if self._finished is not None:
            self._finished(self.builder)


def _frames(events: list[Event]) -> list[bytes]:
    return [sse.named(ev["type"], ev) for ev in events]
