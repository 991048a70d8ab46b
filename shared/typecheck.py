"""The one way Hearth checks the types of data that comes from outside the process: wire
messages (shared/codec.py) and configuration (shared/config.py).

Both declare their shapes as dataclasses; pydantic (already a dependency, compiled) checks a
JSON object against one in strict mode: the declared types exactly, an int is a float but a
bool is not an int, ``None`` only where the type allows it, enums by value, unknown keys ignored
or, for configuration, refused. A failure is a ``TypeProblem`` naming the field, which each
side words its own way (a ``ProtocolError``, a ``ConfigError``).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

T = TypeVar("T")
STRICT = ConfigDict(strict=True)  # for wire messages: unknown fields are ignored (newer peers)
STRICT_CLOSED = ConfigDict(strict=True, extra="forbid")  # for settings: a typo is an error


class TypeProblem(ValueError):
    def __init__(self, field: str, message: str, kind: str, value: Any = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field  # dotted path of the field at fault ("" for the object itself)
        self.message = message
        self.kind = kind  # pydantic's error type: missing, extra_forbidden, int_type, ...
        self.value = value


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def adapter(cls: type[T]) -> TypeAdapter[T]:
    """The (compiled once) checker for ``cls``."""
    found = _ADAPTERS.get(cls)
    if found is None:
        found = _ADAPTERS[cls] = TypeAdapter(cls)
    return found


def check_json(cls: type[T], payload: bytes | str) -> T:
    """``payload`` (a JSON object, already known to parse) as a ``cls``, or a ``TypeProblem``."""
    try:
        return adapter(cls).validate_json(payload)
    except ValidationError as e:
        raise problem(e) from None


def problem(e: ValidationError) -> TypeProblem:
    """The first error of ``e``, as a ``TypeProblem``."""
    err = e.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"])
    return TypeProblem(field, err["msg"], err["type"], err.get("input"))


EXTRA = ("extra_forbidden", "unexpected_keyword_argument")  # a key the type does not declare


def extra_fields(e: ValidationError) -> list[str]:
    return [".".join(str(p) for p in err["loc"]) for err in e.errors() if err["type"] in EXTRA]
