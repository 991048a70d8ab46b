"""Constrained-decoding specs -> llguidance grammars, for both sides of the wire.

A request's ``response_format`` (``Generate.params``) and its tools' JSON Schemas become
llguidance grammars here, so the gateway (which checks that they compile, for an early 400) and
the worker (which runs them) build exactly the same grammar. llguidance is not MLX: it is a Rust
parser with no runtime dependencies, so the gateway may import it; it is imported lazily, only
when a request constrains its output.

JSON is generated in one layout: no whitespace but the single spaces of ``", "`` and ``": "``
(what ``json.dumps`` writes). A model can't then spend its tokens on endless blank lines, and a
JSON value always ends: once it is complete the grammar admits only the end-of-sequence token.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

# llguidance's JSON compile options (JsonCompileOptions): applied over any "x-guidance" in a schema
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
RESPONSE_FORMATS = ("text", "json_object", "json_schema", "lark")
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[([^\]]*)\]")


class GrammarError(ValueError):
    """A grammar llguidance can't compile: a 400 naming ``param`` (and the keyword at fault).
    ``detail`` is the message without the parameter's name in front."""

    def __init__(self, param: str, detail: str) -> None:
        super().__init__(f"{param}: {detail}")
        self.param = param
        self.detail = detail


def _llg() -> Any:
    import llguidance  # lazily: a gateway that never sees a constrained request never loads it

    return llguidance.LLMatcher


def schema_grammar(schema: Any, lenient: bool = False) -> str:
    """The grammar for JSON values that validate against ``schema``; ``lenient``: keywords
    llguidance does not implement are ignored instead of refused (used for tool arguments only)."""
    options = {**JSON_OPTIONS, **({"lenient": True} if lenient else {})}
    try:
        grammar: str = _llg().grammar_from_json_schema(schema, overrides=options)
    except ValueError as e:  # not a JSON object at all
        raise GrammarError("schema", f"the schema is not a JSON object: {e}") from None
    return grammar


def compile_error(grammar: str) -> str | None:
    """Why llguidance refuses ``grammar`` (None: it compiles). Unimplemented JSON Schema keywords
    are named as such."""
    failed, messages = _llg().validate_grammar_with_warnings(grammar)
    if not failed:
        return None
    message = messages[0] if messages else "the grammar does not compile"
    m = _UNIMPLEMENTED.search(message)
    if m:
        keys = ", ".join(k.strip().strip('"') for k in m.group(1).split(","))
        return f"unsupported JSON Schema keyword(s): {keys} (constrained decoding can't enforce them)"
    return message.strip()


@functools.lru_cache(maxsize=256)
def _checked_schema(text: str, param: str) -> str:
    grammar = schema_grammar(json.loads(text))
    error = compile_error(grammar)
    if error is not None:
        raise GrammarError(param, error)
    return grammar


def check_schema(schema: dict[str, Any], param: str) -> None:
    """Refuse a JSON Schema that can't be enforced, naming ``param`` and the keyword. Results
    are cached by the schema's text: agents send the same schemas on every turn."""
    if not isinstance(schema, dict):
        raise GrammarError(param, "a JSON Schema must be an object")
    _checked_schema(json.dumps(schema), param)  # key order kept: it is the output's property order


def response_grammar(fmt: dict[str, Any] | None) -> str | None:
    """The grammar for ``Generate.params["response_format"]`` (None: unconstrained text).

    ``{"type": "json_schema", "schema": {...}}``, ``{"type": "json_object"}`` (any JSON object)
    or ``{"type": "lark", "grammar": "..."}`` (llguidance's Lark dialect)."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in RESPONSE_FORMATS:
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise GrammarError("response_format", f"type {kind!r} is not one of {', '.join(RESPONSE_FORMATS)}")
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        grammar = schema_grammar({"type": "object"})
    elif kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise GrammarError("response_format", "json_schema needs a schema object")
        return _checked_schema(json.dumps(schema), "response_format")
    else:
        text = fmt.get("grammar")
        if not isinstance(text, str) or not text.strip():
            raise GrammarError("response_format", "lark needs a grammar text")
        grammar = _llg().grammar_from_lark(text)
    error = compile_error(grammar)
    if error is not None:
        raise GrammarError("response_format", error)
    return grammar


def tool_schema(parameters: Any) -> dict[str, Any]:
    """A tool's ``parameters`` as the schema its arguments are held to: an object schema, with
    llguidance's options inlined (``x-guidance``) for use inside a Lark grammar (``%json``).
    Keywords llguidance does not implement are left unenforced for tool arguments (the model
    still sees them); a schema that does not compile even so is a ``GrammarError``."""
    schema = dict(parameters) if isinstance(parameters, dict) and parameters else {"type": "object"}
    if schema.get("type") is None and "properties" in schema:
        schema["type"] = "object"
    strict = compile_error(schema_grammar(schema))
    lenient = strict is not None
    if lenient:
        error = compile_error(schema_grammar(schema, lenient=True))
        if error is not None:
            raise GrammarError("tools", error)
    schema["x-guidance"] = {**JSON_OPTIONS, **({"lenient": True} if lenient else {})}
    return schema


@functools.lru_cache(maxsize=512)
def _checked_tool(text: str) -> None:
    tool_schema(json.loads(text))


def check_tool_schema(parameters: Any, param: str) -> None:
    """The gateway's early check of a tool's parameters schema (cached by its text)."""
    try:
        _checked_tool(json.dumps(parameters))
    except GrammarError as e:
        raise GrammarError(param, e.detail) from None
