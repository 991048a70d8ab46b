"""Frames <-> typed messages. orjson only; nothing that crosses a socket is ever pickled.

A message is two frames, ``[kind, payload]``. Decoding checks the kind, that the payload is a
JSON object, that every required field is there and that each field has its declared type
(shared/typecheck.py, the same checker as the configuration's); any failure is a
``ProtocolError`` so a receive loop can log and drop one bad message and go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import Discriminator, Tag

from shared.protocol import MESSAGE_TYPES, STEP_KINDS, Delta, Done, Embed, Embeddings, Error, Kind, Message, Step
from shared.typecheck import STRICT, TypeProblem, check_json


class ProtocolError(ValueError):
    """A frame sequence that is not a valid message."""


def encode(msg: Message) -> list[bytes]:
    """The two frames of ``msg``: orjson writes a dataclass's fields itself (``KIND`` is a class
    attribute, not a field); a step's events go as ``[kind, fields]``."""
    if isinstance(msg, Step):
        return [msg.KIND.value.encode(), orjson.dumps({"events": [[ev.KIND.value, ev] for ev in msg.events]})]
    return [msg.KIND.value.encode(), orjson.dumps(msg)]


def _event_kind(ev: Any) -> str | None:
    """Which member of the event union to check (by the pair's kind), so only that one runs."""
    return ev[0] if isinstance(ev, (list, tuple)) and ev and isinstance(ev[0], str) else None


@dataclass(frozen=True)
class _StepPayload:
    """A ``step``'s payload: its events as ``[kind, fields]`` pairs (kinds in ``STEP_KINDS``)."""

    __pydantic_config__ = STRICT
    events: list[
        Annotated[
            Annotated[tuple[Literal["delta"], Delta], Tag("delta")]
            | Annotated[tuple[Literal["done"], Done], Tag("done")]
            | Annotated[tuple[Literal["error"], Error], Tag("error")],
            Discriminator(_event_kind),
        ]
    ]


assert {Kind.DELTA, Kind.DONE, Kind.ERROR} == set(STEP_KINDS)
for _cls in MESSAGE_TYPES.values():
    _cls.__pydantic_config__ = STRICT  # type: ignore[attr-defined]


def decode(kind: bytes, payload: bytes) -> Message:
    """Parse one message; raise ``ProtocolError`` for anything malformed."""
    try:
        k = Kind(kind.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"unknown message kind {kind[:32]!r}") from None
    try:
        obj = orjson.loads(payload)  # strict JSON: no NaN, UTF-8 only
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"{k}: payload is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{k}: payload is not an object")
    try:
        if k is Kind.STEP:
            msg: Message = Step([ev for _, ev in check_json(_StepPayload, payload).events])
        else:
            msg = check_json(MESSAGE_TYPES[k], payload)
    except TypeProblem as e:
        raise ProtocolError(f"{k}: field {e.field!r}: {e.message}") from None
    if isinstance(msg, Delta) and msg.tool_calls is not None:
        _check_tool_calls(k, msg.tool_calls)
    elif isinstance(msg, Step):
        for ev in msg.events:
            if isinstance(ev, Delta) and ev.tool_calls is not None:
                _check_tool_calls(k, ev.tool_calls)
    elif isinstance(msg, Embed):
        _check_inputs(k, msg.inputs)
    elif isinstance(msg, Embeddings):
        _check_vectors(k, msg.vectors)
    return msg


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_inputs(k: Kind, inputs: list[Any]) -> None:
    """Each input to embed is a text or a list of token ids (ints)."""
    for item in inputs:
        if isinstance(item, str):
            continue
        if not isinstance(item, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            raise ProtocolError(f"{k}: an input is neither a text nor a list of token ids")


def _check_vectors(k: Kind, vectors: list[Any]) -> None:
    """Each embedding is a list of numbers."""
    for vec in vectors:
        if not isinstance(vec, list) or not all(map(_is_number, vec)):
            raise ProtocolError(f"{k}: a vector is not a list of numbers")


_TOOL_CALL_FIELDS = {"index": int, "id": str, "name": str, "arguments": str}


def _check_tool_calls(k: Kind, calls: list[Any]) -> None:
    """Each tool call in a delta is ``{"index": int, "id": str, "name": str, "arguments": str}``."""
    for call in calls:
        if not isinstance(call, dict):
            raise ProtocolError(f"{k}: a tool call is not an object")
        for key, typ in _TOOL_CALL_FIELDS.items():
            value = call.get(key)
            if not isinstance(value, typ) or isinstance(value, bool):
                raise ProtocolError(f"{k}: tool call field {key!r} must be {typ.__name__}")
