"""Argument values in a tool-call grammar: how one parameter's value is written in a format.

mlx-lm's parsers read arguments in two ways. Formats that carry the arguments as one JSON
object (``json_tools``, ``mistral``, ``kimi_k2``) hold it to the function's schema whole, with
llguidance's ``%json``. Formats that write each parameter on its own (``qwen3_coder``'s
``<parameter=x>…</parameter>``, ``glm47``'s ``<arg_key>``/``<arg_value>``, ``minimax_m2``, …) hand
the parser a string per parameter, which it converts by the schema's type: a number or an object
is decoded from its text, a string is taken as written. So each parameter gets a grammar for the
text that converts to a valid value: a JSON value (``%json`` of the parameter's schema) where the
parser decodes JSON, a raw-text rule where it keeps the text, avoiding whatever the parser would
misread (its closing tags, a bare ``null``, surrounding whitespace it strips).

A schema Hearth can't hold faithfully this way (a raw string with keywords beyond enum, length
and pattern, a parameter with no ``type`` in a format that converts by type, object-level
keywords like ``minProperties``) makes the builder raise ``Inexpressible``: that request's calls
are then parsed, not constrained.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.grammar import GrammarTokenizer

# object-level keywords a per-parameter layout keeps (by writing only declared, valid parameters)
_OBJECT_KEYS = {"type", "properties", "required", "additionalProperties", "description", "title", "$schema", "$id"}
_OBJECT_KEYS |= {"$defs", "definitions", "x-guidance", "default", "examples", "strict", "$comment"}
_STRING_KEYS = {"type", "enum", "const", "minLength", "maxLength", "description", "title", "default", "examples"}
_STRING_KEYS |= {"$comment", "x-guidance", "pattern", "format"}  # format: an annotation (unenforced)
_INT_LIMIT = 2**53 - 1  # parsers that convert through float() keep integers exact up to here
_NUMBER_LIMIT = 1e15  # and a number this size never overflows int(float(text))
_SPACE = r"[\s\x1c-\x1f]"  # what Python's str.strip() removes (Unicode White_Space and \x1c-\x1f)


class Inexpressible(Exception):
    """The format can't carry this schema faithfully: constrain nothing, parse as before."""


@dataclass(frozen=True)
class Raw:
    """How a format keeps a string parameter as written: what the text must avoid."""

    forbid: tuple[str, ...]  # substrings that would end or break the value (closing tags, markers)
    stripped: bool = False  # the parser strips the value: no whitespace at either end
    not_null: bool = False  # the parser reads "null" (any case) as None
    extra: tuple[str, ...] = field(default=())  # more whole-value regexes the text must not match


def regex_escape(text: str) -> str:
    """``text`` as a literal inside a Lark ``/regex/`` (never ``\\<``, a word boundary there)."""
    out = []
    for ch in text:
        if ch in r"\.+*?()|[]{}^$#&-~/":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append(r"\n")
        else:
            out.append(ch)
    return "".join(out)


def lark_regex(pattern: str) -> str:
    """A JSON Schema ``pattern`` inside a Lark ``/regex/``: its slashes escaped. llguidance reads
    it as it reads patterns in JSON (a look-around is a compile error: the grammar is then
    dropped, see ``worker.toolformats._compiled``)."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(pattern[i : i + 2])
            i += 2
            continue
        out.append({"/": "\\/", "\n": "\\n"}.get(ch, ch))
        i += 1
    return "".join(out)


def searched(pattern: str) -> str:
    """A regex matching whole values in which ``pattern`` is found (JSON Schema's semantics):
    free text around it, except at a ``^`` or ``$`` anchoring it (llguidance's regexes have no
    anchors: a pattern with others inside fails to compile, and the grammar is dropped)."""
    head, tail = "(.|\\n)*", "(.|\\n)*"
    if pattern.startswith("^"):
        pattern, head = pattern[1:], ""
    body = pattern[:-1]
    if pattern.endswith("$") and (len(body) - len(body.rstrip("\\"))) % 2 == 0:  # not an escaped "\\$"
        pattern, tail = body, ""
    return f"{head}(?:{lark_regex(pattern)}){tail}"


def object_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A function's parameters as ``(properties, required)`` for a per-parameter layout; object
    keywords beyond declared properties can't be held by writing parameters one by one."""
    extra = set(schema) - _OBJECT_KEYS
    if extra:
        raise Inexpressible(f"object keyword(s) {sorted(extra)}")
    if schema.get("type", "object") != "object":
        raise Inexpressible("parameters that are not an object")
    props = schema.get("properties") or {}
    required = schema.get("required") or []
    if not isinstance(props, dict) or not isinstance(required, list):
        raise Inexpressible("properties that are not an object")
    if any(not isinstance(r, str) or r not in props for r in required):
        raise Inexpressible("a required parameter that is not among the properties")
    return props, required


def json_value(root: dict[str, Any], schema: Any, bound: bool = False) -> str:
    """``%json`` for one parameter's value: the root's definitions and llguidance options go
    along (a ``$ref`` inside resolves against them). ``bound``: a number is kept within what a
    float-converting parser reads back exactly."""
    if not isinstance(schema, dict):
        raise Inexpressible("a parameter schema that is not an object")
    sub = dict(schema)
    for key in ("$defs", "definitions", "x-guidance"):
        if key in root and key not in sub:
            sub[key] = root[key]
    if bound and sub.get("type") in ("integer", "number"):
        limit = _INT_LIMIT if sub["type"] == "integer" else _NUMBER_LIMIT
        sub["minimum"] = max(sub.get("minimum", -limit), -limit)
        sub["maximum"] = min(sub.get("maximum", limit), limit)
    return "%json " + json.dumps(sub, ensure_ascii=False)


class Rules:
    """The Lark rules of one grammar as it is built: named rules and terminals, and markers
    written special-token-aware (a special token by id, text as a literal)."""

    def __init__(self, tok: GrammarTokenizer) -> None:
        self.tok = tok
        self.lines: list[str] = []
        self._n = 0

    def rule(self, body: str) -> str:
        self._n += 1
        name = f"r{self._n}"
        self.lines.append(f"{name}: {body}")
        return name

    def terminal(self, body: str) -> str:
        self._n += 1
        name = f"T{self._n}"
        self.lines.append(f"{name}: {body}")
        return name

    def lit(self, text: str) -> str:
        return self.tok.seq(text)

    def raw(self, schema: Any, how: Raw, closer: str) -> str:
        """A string parameter's value as the parser keeps it, then ``closer`` (the text that
        ends it): its schema's enum or length held, anything ``how`` names avoided. The value
        and a text closer are one lazy lexeme, which ends at the closer's first occurrence: a
        greedy value would swallow the closer's first characters (the value may hold them)."""
        if not isinstance(schema, dict) or schema.get("type") != "string" or set(schema) - _STRING_KEYS:
            raise Inexpressible("a string parameter with keywords beyond enum, length and pattern")
        lengths = [schema.get(k, 0) for k in ("minLength", "maxLength")]
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in lengths):
            raise Inexpressible("a string length that is not a count")
        choices = schema.get("enum", [schema["const"]] if "const" in schema else None)
        if not isinstance(choices, list | None):
            raise Inexpressible("an enum that is not a list")
        if choices is not None:
            ok = [c for c in choices if isinstance(c, str) and self._fits(c, schema, how)]
            if not ok:
                raise Inexpressible("an enum none of whose values the format can write")
            return "(" + " | ".join(self.lit(c) for c in ok) + ") " + self.lit(closer)
        parts = []
        lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
        if lo or hi is not None:
            parts.append(f"/(.|\\n){{{lo},{'' if hi is None else int(hi)}}}/")
        else:
            parts.append("/(.|\\n)*/")
        if how.stripped:
            edge = _SPACE.replace("[", "[^", 1)
            parts.append(f"/({edge}((.|\\n)*{edge})?)?/")
        for f in how.forbid:
            parts.append(f"~/(.|\\n)*{regex_escape(f)}(.|\\n)*/")
        pattern = schema.get("pattern")
        if pattern is not None:  # JSON Schema's pattern searches: anywhere in the value
            if not isinstance(pattern, str):
                raise Inexpressible("a pattern that is not a string")
            parts.append(f"/{searched(pattern)}/")
        if how.not_null:
            parts.append("~/(?i:null)/")
        parts += [f"~/{x}/" for x in how.extra]
        value = self.terminal(" & ".join(parts))
        special = self.tok.opening_special(closer)
        if special is not None:  # a special token can't be swallowed by text
            return f"{value} {self.lit(closer)}"
        text = closer
        rest = ""
        for i in range(1, len(closer)):  # the closer's text up to a special token inside it
            if self.tok.opening_special(closer[i:]) is not None:
                text, rest = closer[:i], closer[i:]
                break
        self._n += 1
        lazy = f"v{self._n}"
        self.lines.append(f"{lazy}[lazy]: {value} {json.dumps(text, ensure_ascii=False)}")
        return f"{lazy} {self.lit(rest)}" if rest else lazy

    @staticmethod
    def _fits(value: str, schema: dict[str, Any], how: Raw) -> bool:
        if any(f in value for f in how.forbid) or (how.not_null and value.lower() == "null"):
            return False
        if how.stripped and value != value.strip():
            return False
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and re.search(pattern, value) is None:
            return False
        return int(schema.get("minLength", 0)) <= len(value) <= int(schema.get("maxLength", len(value)))


def optional_run(rules: Rules, items: list[tuple[str, bool]], sep: str, at_least_one: bool = False) -> str:
    """The parameters in declared order, each ``(rule, required)``: required ones always, the
    others optional; ``sep`` between two (a Lark expression, or "" for none). ``at_least_one``:
    a format that can't write a call with no arguments. Suffixes are shared named rules, so
    the grammar grows linearly with the parameters."""
    if not items:
        if at_least_one:
            raise Inexpressible("a call with no arguments")
        return '""'
    n = len(items)
    lead = ["", *[""] * n]  # lead[k]: the rule for items k.. when one was written before them
    fresh = ["", *[""] * n]  # fresh[k]: the same when none was written yet
    lead[n] = fresh[n] = '""'
    for k in range(n - 1, -1, -1):
        item, req = items[k]
        after = f"{sep} {item}" if sep else item
        with_lead = f"{after} {lead[k + 1]}"
        with_fresh = f"{item} {lead[k + 1]}"
        lead[k] = rules.rule(with_lead if req else f"({with_lead}) | {lead[k + 1]}")
        fresh[k] = rules.rule(with_fresh if req else f"({with_fresh}) | {fresh[k + 1]}")
    if not at_least_one:
        return fresh[0]
    # at least one written: the first written is item i, and no required item comes before it
    alts = []
    for i, (item, req) in enumerate(items):
        alts.append(f"({item} {lead[i + 1]})")
        if req:
            break
    return "(" + " | ".join(alts) + ")"
