"""Reading and validating JSON request bodies: size limit, content type, JSON, schema.

Each failure is a ``HearthError`` naming what is wrong, so a bad body is a clear 4xx and never
reaches a worker.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, BeforeValidator, ValidationError
from starlette.requests import Request

from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from shared.units import parse_duration

M = TypeVar("M", bound=BaseModel)


def _duration(v: Any) -> float:
    return parse_duration(v)  # its ValueError names the problem (and refuses booleans)


# The Ollama-style ``keep_alive`` request field (every API): seconds, "5m", -1/"forever", 0;
# parsed here, once, into seconds (``shared.units.FOREVER`` for never).
KeepAlive = Annotated[float, BeforeValidator(_duration)]


def check_unique_names(names: list[str]) -> None:
    """Tool (function) names must be unique in a request: a call could not say which it means."""
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"function names must be unique; repeated: {', '.join(dupes)}")


async def read_json(request: Request, limit: int, any_type: bool = False) -> Any:
    """The body as JSON. ``any_type``: whatever the Content-Type says (Ollama's API takes JSON
    sent as ``curl -d``, i.e. form-encoded by its header)."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if not any_type and ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"send the body as application/json, not {ctype}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body has {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object", code="invalid_json")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"the body is not valid JSON: {e}", code="invalid_json") from None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part) not in _TYPE_TAGS and not any(c in str(part) for c in "[]-") and not str(part)[:1].isupper():
            out += ("." if out else "") + str(part)  # a field name, not a union member's tag
    return out


def _most_telling(errors: list[Any]) -> Any:
    """Of the errors about the first parameter at fault, prefer one from a union member whose type
    matched (``stop`` with 5 strings: "at most 4 items", not "should be a valid string")."""
    first = errors[0]
    field = first["loc"][:1]
    for err in errors:
        if (
            err["loc"][:1] == field
            and not err["type"].endswith("_type")
            and err["type"] not in ("is_instance_of", "bool_parsing")
        ):
            return err
    return first


def validate(model: type[M], data: Any, context: dict[str, Any] | None = None) -> M:
    """Parse ``data`` into ``model``; the first problem becomes a 400 naming its parameter.
    ``context`` reaches the schema's validators (the model's image policy: gateway.media)."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"the body must be a JSON object, not {type(data).__name__}", code="invalid_body")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        err = _most_telling(e.errors(include_url=False))
        param = _param(tuple(err["loc"])) or None
        msg = err["msg"].removeprefix("Value error, ")
        code = "missing_parameter" if err["type"] == "missing" else "invalid_parameter"
        raise InvalidRequest(f"{param}: {msg}" if param else msg, param=param, code=code) from None
