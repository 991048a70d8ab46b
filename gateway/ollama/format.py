"""Ollama's output over the generation session: the NDJSON chunks and the final object of
``/api/chat`` and ``/api/generate`` (Ollama's shapes) from ``delta`` and ``done``, and
``NdjsonStream``, the session's ``StreamFormat`` for them. Durations are nanoseconds, as Ollama
reports them."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.errors import HearthError
from gateway.session import Choice
from shared.protocol import Delta, Done

NDJSON = "application/x-ndjson"
NDJSON = "application/x-ndjson"
DONE_REASONS = {"stop": "stop", "tool_calls": "stop", "length": "length", "loop": "loop"}


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def tool_calls_out(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Wire tool calls in Ollama's shape: arguments as an object."""
    return [
        {"id": c["id"], "function": {"index": c["index"], "name": c["name"], "arguments": orjson.loads(c["arguments"])}}
        for c in calls
    ]


class Shape:
    """One response's chunks: ``chat`` puts text in ``message.content``, ``generate`` in
    ``response``. ``t0`` is when the request arrived (perf_counter), for ``total_duration``."""

    def __init__(self, model: str, chat: bool, t0: float) -> None:
        self.model = model
        self.chat = chat
        self.t0 = t0

    def _base(self) -> dict[str, Any]:
        return {"model": self.model, "created_at": timestamp()}

    def _body(self, text: str, calls: list[dict[str, Any]] | None, thinking: str = "") -> dict[str, Any]:
        """Text in ``message.content`` (chat) or ``response`` (generate); a reasoning model's
        reasoning beside it in ``thinking``, never in the text."""
        if not self.chat:
            return {"response": text, "thinking": thinking} if thinking else {"response": text}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = tool_calls_out(calls)
        return {"message": message}

    def chunk(self, d: Delta, want_logprobs: bool) -> dict[str, Any]:
        out = {**self._base(), **self._body(d.text, d.tool_calls, d.reasoning), "done": False}
        if want_logprobs and d.logprobs:
            out["logprobs"] = d.logprobs
        return out

    def final(
        self,
        done: Done,
        text: str = "",
        calls: list[dict[str, Any]] | None = None,
        logprobs: list[Any] | None = None,
        thinking: str = "",
    ) -> dict[str, Any]:
        """The last object: the whole text when not streamed, with the counts and durations."""
        out = {**self._base(), **self._body(text, calls, thinking)}
        if logprobs:
            out["logprobs"] = logprobs
        out.update({"done": True, "done_reason": DONE_REASONS.get(done.finish_reason, done.finish_reason)})
        out.update(durations(done, time.perf_counter() - self.t0))
        return out

    def status(self, reason: str) -> dict[str, Any]:
        """The answer to an empty request that only loads (``load``) or unloads (``unload``)."""
        return {**self._base(), **self._body("", None), "done": True, "done_reason": reason}


def durations(done: Done, wall_s: float) -> dict[str, int]:
    """Ollama's counts and nanosecond durations: ``load_duration`` is the time before the worker
    started the request (queueing and a model load), ``prompt_eval_duration`` the time to the
    first token, ``eval_duration`` the rest of the worker's time."""
    ttft = float(done.timings.get("ttft_s", 0.0))
    worker = float(done.timings.get("total_s", 0.0))
    return {
        "total_duration": int(wall_s * 1e9),
        "load_duration": int(max(0.0, wall_s - worker) * 1e9),
        "prompt_eval_count": int(done.usage.get("prompt_tokens", 0)),
        "prompt_eval_duration": int(ttft * 1e9),
        "eval_count": int(done.usage.get("completion_tokens", 0)),
        "eval_duration": int(max(0.0, worker - ttft) * 1e9),
    }


class NdjsonStream:
    """Ollama's stream over the generation session: one JSON object a line. Its keep-alive is
    an empty chunk (``content: ""``, ``done: false``), which Ollama's clients take as nothing
    new (a blank line would break their line-by-line JSON parsing)."""

    media_type = NDJSON

    def __init__(self, shape: Shape, want_logprobs: bool) -> None:
        self.headers: dict[str, str] = {}
        self.shape = shape
        self.want_logprobs = want_logprobs

    def opening(self, rid: str) -> list[bytes]:
        return []

    def event(self, choice: Choice, ev: Delta | Done) -> list[bytes]:
        if isinstance(ev, Delta):
            return [_line(self.shape.chunk(ev, self.want_logprobs))]
        return [_line(self.shape.final(ev))]

    def closing(self) -> list[bytes]:
        return []

    def keepalive(self) -> bytes:
        return _line(self.shape.chunk(Delta("", "", 0), False))

    def failure(self, err: HearthError) -> bytes:
        return _line({"error": err.message})


def _line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"
