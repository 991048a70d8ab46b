"""Frames <-> typed messages. orjson only; nothing that crosses a socket is ever pickled.

A message is two frames, ``[kind, payload]``. Decoding checks the kind, that the payload is a
JSON object, that every required field is there and that each field has its declared type; any
failure is a ``ProtocolError`` so a receive loop can log and drop one bad message and go on.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any

import orjson

from shared.protocol import MESSAGE_TYPES, STEP_KINDS, Delta, Done, Embed, Embeddings, Kind, Message, Step, WorkerState


class ProtocolError(ValueError):
    """A frame sequence that is not a valid message."""


def encode(msg: Message) -> list[bytes]:
    """The two frames of ``msg``: orjson writes a dataclass's fields itself (``KIND`` is a class
    attribute, not a field); a step's events go as ``[kind, fields]``."""
    if isinstance(msg, Step):
        return [msg.KIND.value.encode(), orjson.dumps({"events": [[ev.KIND.value, ev] for ev in msg.events]})]
    return [msg.KIND.value.encode(), orjson.dumps(msg)]


_SIMPLE = {str: str, int: int, float: (int, float), bool: bool, dict: dict, list: list}


@dataclasses.dataclass(frozen=True)
class _Field:
    typ: Any  # what isinstance must accept (None: anything)
    required: bool
    nullable: bool


@cache
def _checks(cls: type) -> dict[str, _Field]:
    """Per field of a message class: its runtime type check, and whether it may be absent or null."""
    hints = typing.get_type_hints(cls)
    out: dict[str, _Field] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else ()
        nullable = type(None) in args
        if nullable:
            hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint) or hint
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        typ = WorkerState if hint is WorkerState else _SIMPLE.get(origin)
        out[f.name] = _Field(typ, required, nullable)
    return out


def decode(kind: bytes, payload: bytes) -> Message:
    """Parse one message; raise ``ProtocolError`` for anything malformed."""
    try:
        k = Kind(kind.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"unknown message kind {kind[:32]!r}") from None
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"{k}: payload is not JSON: {e}") from None
    return _from_obj(k, obj)


def _from_obj(k: Kind, obj: Any) -> Message:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{k}: payload is not an object")
    cls = MESSAGE_TYPES[k]
    args: dict[str, Any] = {}
    for name, spec in _checks(cls).items():
        typ = spec.typ
        if name not in obj:
            if spec.required:
                raise ProtocolError(f"{k}: missing field {name!r}")
            continue
        value = obj[name]
        if value is None:
            if not spec.nullable:
                raise ProtocolError(f"{k}: field {name!r} is null")
        elif typ is WorkerState:
            try:
                value = WorkerState(value)
            except ValueError:
                raise ProtocolError(f"{k}: bad state {value!r}") from None
        elif typ is not None and not isinstance(value, typ):
            raise ProtocolError(f"{k}: field {name!r} has type {type(value).__name__}")
        elif typ is not None and typ is not bool and isinstance(value, bool) and typ in (int, (int, float)):
            raise ProtocolError(f"{k}: field {name!r} has type bool")
        args[name] = value
    if cls is Step:
        args["events"] = [_step_event(ev) for ev in args["events"]]
    msg = cls(**args)
    _check_numbers(k, msg)
    if isinstance(msg, Delta) and msg.tool_calls is not None:
        _check_tool_calls(k, msg.tool_calls)
    elif isinstance(msg, Embeddings):
        _check_vectors(k, msg.vectors)
    elif isinstance(msg, Embed):
        _check_inputs(k, msg.inputs)
    return msg


def _step_event(ev: Any) -> Message:
    """One event of a ``step``: ``[kind, fields]`` with kind delta, done or error."""
    if not isinstance(ev, list) or len(ev) != 2 or not isinstance(ev[0], str):
        raise ProtocolError("step: an event is not [kind, fields]")
    try:
        k = Kind(ev[0])
    except ValueError:
        raise ProtocolError(f"step: unknown event kind {ev[0][:32]!r}") from None
    if k not in STEP_KINDS:
        raise ProtocolError(f"step: a {k} can't be a step event")
    return _from_obj(k, ev[1])


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


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_vectors(k: Kind, vectors: list[Any]) -> None:
    """Each embedding is a list of numbers."""
    for vec in vectors:
        if not isinstance(vec, list) or not all(map(_is_number, vec)):
            raise ProtocolError(f"{k}: a vector is not a list of numbers")


def _check_inputs(k: Kind, inputs: list[Any]) -> None:
    """Each input to embed is a text or a list of token ids (ints)."""
    for item in inputs:
        if isinstance(item, str):
            continue
        if not isinstance(item, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            raise ProtocolError(f"{k}: an input is neither a text nor a list of token ids")


def _check_numbers(k: Kind, msg: Message) -> None:
    """Counters inside a message's dicts are numbers (the gateway adds them up)."""
    numbers: dict[str, Any] = {}
    if isinstance(msg, Done):
        numbers = {**msg.usage, **msg.timings}
    elif isinstance(msg, Embeddings):
        numbers = msg.usage
    for key, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"{k}: {key!r} must be a number")
