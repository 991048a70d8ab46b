"""Tool-call grammars for mlx-lm's native call formats (``mlx_lm.tool_parsers``).

Each format is a ``Layout``: how one call is written between the format's markers (its function
name, then its arguments, held to the function's schema through ``worker.toolvalues``), and how
several calls share a block. ``answer_grammar`` puts the calls into a whole answer the way
``tool_choice`` and ``parallel_tool_calls`` ask: free text (never the call opening) around calls
for "auto", a call from the first token for "required" or a named function, one call and the end
for ``parallel_tool_calls`` false. Every answer the grammar admits is read by the format's own
mlx-lm parser into calls of offered functions whose arguments validate (tests/worker/
test_toolformats.py samples them). A format or schema a layout can't hold faithfully gives None:
the calls are then parsed, not constrained, as before.
"""

from __future__ import annotations

import json
import keyword
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llguidance

from shared.grammar import GrammarError, tool_schema
from worker.toolvalues import Inexpressible, Raw, Rules, json_value, object_schema, optional_run, regex_escape

if TYPE_CHECKING:
    from worker.grammar import GrammarTokenizer
    from worker.toolcalls import ToolSyntax

log = logging.getLogger("hearth.worker")
Call = Callable[[Rules, str, dict[str, Any], str], str]  # (rules, name, schema, end marker) -> expression

_ANY = re.compile(r"^[A-Za-z0-9_.-]+$")  # the names the gateway lets through
_WORD = re.compile(r"^[A-Za-z0-9_]+$")
_DASHED = re.compile(r"^[A-Za-z0-9_-]+$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NO_TAGS = re.compile(r'^[^\s<>"&]+$')  # a key inside a tag or attribute
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # a Python keyword argument (not a keyword)


@dataclass(frozen=True)
class Layout:
    """One format: a call's grammar, and the text around calls inside a block."""

    call: Call
    names: re.Pattern[str] = _ANY  # function names the parser reads back
    head: str = ""  # text after the start marker
    tail: str = ""  # text before the end marker
    sep: str | None = None  # between calls sharing one block; None: one call per block
    needs_parameters: bool = False  # the parser fails on a tool without a "parameters" key


def _params(
    rules: Rules, schema: dict[str, Any], keys: re.Pattern[str], write: Callable[[str, Any], str]
) -> list[tuple[str, bool]]:
    """Each declared parameter as ``(rule, required)``, written by ``write(key, schema)``."""
    props, required = object_schema(schema)
    items = []
    for key, sub in props.items():
        if not keys.match(key) or (keys is _IDENT and keyword.iskeyword(key)):
            raise Inexpressible(f"parameter name {key!r}")
        items.append((rules.rule(write(key, sub)), key in required))
    return items


def _json_object(rules: Rules, schema: dict[str, Any]) -> str:
    return "%json " + json.dumps(schema, ensure_ascii=False)


# -- JSON-argument formats ---------------------------------------------------------------------


def _json_tools(rules: Rules, name: str, schema: dict[str, Any], end: str) -> str:
    head = rules.lit('{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": ')
    return f'{head} {_json_object(rules, schema)} "}}"'


def _mistral_header(rules: Rules, name: str, schema: dict[str, Any], end: str) -> str:
    return f"{rules.lit(name)} {rules.lit('[ARGS]')} {_json_object(rules, schema)}"


def _kimi_k2(rules: Rules, name: str, schema: dict[str, Any], end: str) -> str:
    index = rules.terminal("/[0-9]{1,2}/")
    opening = rules.lit("<|tool_call_begin|>") + " " + rules.lit(f"functions.{name}:")
    args = f"{rules.lit('<|tool_call_argument_begin|>')} {_json_object(rules, schema)} {rules.lit('<|tool_call_end|>')}"
    return f"{opening} {index} {args}"


def _kimi_k3(rules: Rules, name: str, schema: dict[str, Any], end: str) -> str:
    index = rules.terminal("/[0-9]{1,2}/")
    opening = rules.lit(f'<|open|>call tool="{name}" index="')
    body = rules.lit('"<|sep|>\n<|open|>json type="object"<|sep|>')
    closing = rules.lit("<|close|>json<|sep|>\n<|close|>call<|sep|>")
    return f"{opening} {index} {body} {_json_object(rules, schema)} {closing}"


def _pythonic(rules: Rules, name: str, schema: dict[str, Any], end: str) -> str:
    items = _params(rules, schema, _IDENT, lambda k, s: f"{rules.lit(k + '=')} {json_value(schema, s)}")
    return f"{rules.lit(name + '(')} {optional_run(rules, items, rules.lit(', '))} {rules.lit(')')}"


# -- per-parameter formats ---------------------------------------------------------------------

_QWEN_STRINGS = {"string"}
_QWEN_JSON = ("int", "uint", "long", "short", "unsigned", "num", "float", "boolean", "bool", "object", "array", "null")


def _qwen3_coder(rules: Rules, name: str, schema: dict[str, Any], end: str) -> str:
    """``<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n…</function>``: a value is
    converted by its schema's ``type`` (qwen3_coder's ``_convert_param_value``)."""
    raw = Raw(forbid=("</parameter>", end), not_null=True)

    def value(key: str, sub: Any) -> str:
        kind = sub.get("type") if isinstance(sub, dict) else None
        if not isinstance(kind, str):
            raise Inexpressible(f"parameter {key!r} without a single type")
        kind = kind.strip().lower()
        closer = "\n</parameter>\n"
        if kind in _QWEN_STRINGS:
            text = rules.raw(sub, raw, closer)
        elif kind.startswith(_QWEN_JSON):
            text = f"{json_value(schema, sub, bound=True)} {rules.lit(closer)}"
        else:
            raise Inexpressible(f"parameter type {kind!r}")
        return f"{rules.lit(f'<parameter={key}>' + chr(10))} {text}"

    items = _params(rules, schema, re.compile(r"^[^\s<>]+$"), value)
    return f"{rules.lit(f'<function={name}>' + chr(10))} {optional_run(rules, items, '')} {rules.lit('</function>')}"


_NL = '"\\n"?'  # an optional newline


def _kv(prefix: str, at_least_one: bool) -> Call:
    """GLM-4.7 (and LongCat): ``NAME<arg_key>KEY</arg_key><arg_value>VALUE</arg_value>…``, or
    with a newline before each tag (GLM-4.5's layout; the parser takes both); a value typed
    "string" is kept as written (stripped), any other is decoded as JSON."""
    key_open, key_close = f"<{prefix}arg_key>", f"</{prefix}arg_key>"
    value_open, value_close = f"<{prefix}arg_value>", f"</{prefix}arg_value>"

    def call(rules: Rules, name: str, schema: dict[str, Any], end: str) -> str:
        raw = Raw(forbid=(value_close, end), stripped=True)

        def value(key: str, sub: Any) -> str:
            if isinstance(sub, dict) and sub.get("type") == "string":
                text = rules.raw(sub, raw, value_close)
            else:
                text = f"{json_value(schema, sub)} {rules.lit(value_close)}"
            return f"{_NL} {rules.lit(key_open + key + key_close)} {_NL} {rules.lit(value_open)} {text}"

        items = _params(rules, schema, _NO_TAGS, value)
        if not at_least_one:
            return f"{rules.lit(name)} {optional_run(rules, items, '')} {_NL}"
        # longcat's parser can't read a name alone; a call without arguments is its JSON form
        empty = rules.lit(json.dumps({"name": name, "arguments": {}}))
        if not items:
            return empty
        written = f"{rules.lit(name)} {optional_run(rules, items, '', at_least_one=True)} {_NL}"
        return written if any(req for _, req in items) else f"({written}) | {empty}"

    return call


def _typed(open_: str, close: str, forbid: tuple[str, ...] = (), cdata: bool = False) -> Call:
    """MiniMax-M2 / MiniCPM5 parameters: ``<parameter name="KEY">VALUE</parameter>``, converted
    by the schema's types (minimax_m2's ``_convert_param_value_with_types``): a string is the
    stripped text, anything else decoded from JSON."""

    def call(rules: Rules, name: str, schema: dict[str, Any], end: str) -> str:
        extra = (r"<!\[CDATA\[(.|\n)*\]\]>",) if cdata else ()
        raw = Raw(forbid=(close, end, *forbid), stripped=True, not_null=True, extra=extra)

        def value(key: str, sub: Any) -> str:
            kind = sub.get("type") if isinstance(sub, dict) else None
            if not isinstance(kind, str) or any(k in sub for k in ("anyOf", "oneOf", "allOf")):
                raise Inexpressible(f"parameter {key!r} without a single type")
            if kind == "string":
                text = rules.raw(sub, raw, close)
            else:
                text = f"{json_value(schema, sub, bound=True)} {rules.lit(close)}"
            return f"{rules.lit(open_ + json.dumps(key) + '>')} {text}{end_line}"

        # minimax ends each parameter's line ("\n" as a separator would be a prefix of the
        # "\n</invoke>" after the last one: a lexer conflict), minicpm5 runs them together
        end_line = "" if cdata else ' "\\n"'
        items = _params(rules, schema, _NO_TAGS, value)
        return optional_run(rules, items, "")

    return call


_minimax_params = _typed("<parameter name=", "</parameter>", forbid=("</invoke>",))
_minicpm_params = _typed("<param name=", "</param>", cdata=True)


def _minimax_m2(rules: Rules, name: str, schema: dict[str, Any], end: str) -> str:
    params = _minimax_params(rules, name, schema, end)
    return f"{rules.lit(f'<invoke name={json.dumps(name)}>' + chr(10))} {params} {rules.lit('</invoke>')}"


def _minicpm5(rules: Rules, name: str, schema: dict[str, Any], end: str) -> str:
    return f"{rules.lit(json.dumps(name) + '>')} {_minicpm_params(rules, name, schema, end)}"


def _muse_spark(rules: Rules, name: str, schema: dict[str, Any], end: str) -> str:
    """``<atem:invoke name="NAME"><atem:parameter name="KEY">VALUE</atem:parameter>…``: the
    parser decodes each value as JSON when it can, so every value is written as JSON."""

    def value(key: str, sub: Any) -> str:
        opening = rules.lit(f"<atem:parameter name={json.dumps(key)}>")
        return f"{opening} {json_value(schema, sub)} {rules.lit(chr(10).join(['</atem:parameter>', '']))}"

    items = _params(rules, schema, _NO_TAGS, value)  # each ends its line (as minimax's do)
    body = optional_run(rules, items, "")
    return f"{rules.lit(f'<atem:invoke name={json.dumps(name)}>' + chr(10))} {body} {rules.lit('</atem:invoke>')}"


def _braced(quote: str, forbid: tuple[str, ...]) -> Call:
    """Gemma's ``call:NAME{key:VALUE,…}``: strings between ``quote`` markers, other scalars as
    JSON; nested objects and arrays are left unconstrained (their bare-key syntax isn't JSON)."""

    def call(rules: Rules, name: str, schema: dict[str, Any], end: str) -> str:
        raw = Raw(forbid=(quote, end, *forbid))

        def value(key: str, sub: Any) -> str:
            kind = sub.get("type") if isinstance(sub, dict) else None
            if kind == "string":
                text = f"{rules.lit(quote)} {rules.raw(sub, raw, quote)}"
            elif kind in ("integer", "number", "boolean", "null"):
                text = json_value(schema, sub)
            else:
                raise Inexpressible(f"parameter {key!r}: only strings, numbers and booleans")
            return f"{rules.lit(key + ':')} {text}"

        items = _params(rules, schema, _WORD, value)
        return f"{rules.lit(f'call:{name}' + '{')} {optional_run(rules, items, rules.lit(','))} {rules.lit('}')}"

    return call


LAYOUTS: dict[str, Layout] = {
    "json_tools": Layout(_json_tools, head="\n", tail="\n"),
    "qwen3_coder": Layout(_qwen3_coder, head="\n", tail="\n"),
    "glm47": Layout(_kv("", at_least_one=False)),
    "laguna": Layout(_kv("", at_least_one=False)),  # GLM-4.7's format (mlx-lm reuses its parser)
    "longcat": Layout(_kv("longcat_", at_least_one=True), needs_parameters=True),
    "minimax_m2": Layout(_minimax_m2, head="\n", tail="\n"),
    "minicpm5": Layout(_minicpm5),
    "muse_spark": Layout(_muse_spark, head="\n", tail="\n"),
    "kimi_k2": Layout(_kimi_k2, sep=""),
    "kimi_k3": Layout(_kimi_k3, head="\n", tail="\n", sep="\n"),
    "gemma4": Layout(_braced('<|"|>', ("\x00",)), names=_DASHED),
    "function_gemma": Layout(_braced("<escape>", ("}",)), names=_WORD),
    "pythonic": Layout(_pythonic, names=_DOTTED, head="[", tail="]", sep=", "),
}
_MISTRAL_HEADER = Layout(_mistral_header, names=_DASHED, sep="[TOOL_CALLS]")
_MISTRAL_LIST = Layout(_json_tools, head="[", tail="]", sep=", ")


def layout(tok: GrammarTokenizer, syntax: ToolSyntax) -> Layout | None:
    """The format's layout; Mistral's depends on its tokenizer: ``name[ARGS]{…}`` when
    ``[ARGS]`` is a special token (tokenizer v11 and later), else a JSON list of calls."""
    if syntax.name == "mistral":
        return _MISTRAL_HEADER if tok.is_special("[ARGS]") else _MISTRAL_LIST
    return LAYOUTS.get(syntax.name)


def _calls(rules: Rules, fmt: Layout, tools: list[dict[str, Any]], only: str | None, end: str) -> str:
    """One call of an offered function (or of ``only``), as a rule."""
    alts = []
    for t in tools:
        fn = t.get("function") or {}
        name = fn.get("name")
        if not isinstance(name, str) or (only is not None and name != only):
            continue
        if not fmt.names.match(name):
            raise Inexpressible(f"function name {name!r}")
        if "parameters" not in fn and fmt.needs_parameters:
            raise Inexpressible("a tool without parameters (longcat's parser needs them)")
        try:
            schema = tool_schema(fn.get("parameters"))
        except GrammarError as e:
            raise GrammarError("tools", f"function {name!r}: parameters: {e.detail}") from None
        alts.append(rules.rule(fmt.call(rules, name, schema, end)))
    if not alts:
        raise GrammarError("tool_choice", f"no offered function is named {only!r}")
    return rules.rule(" | ".join(alts))


def answer_grammar(
    tok: GrammarTokenizer, syntax: ToolSyntax, tools: list[dict[str, Any]], choice: Any, parallel: bool
) -> str | None:
    """The Lark grammar of a whole answer with ``tools`` offered in ``syntax``'s format, or None
    when the format (or a schema in it) can't be held faithfully."""
    fmt = layout(tok, syntax)
    if fmt is None:
        return None
    only = choice.get("name") if isinstance(choice, dict) else None
    forced = choice == "required" or only is not None
    rules = Rules(tok)
    start, end = syntax.start, syntax.end
    alone = only is not None and not parallel  # one call of that function, then the end
    try:
        # the other tools matter only where the answer may call them: alone, one that can't be
        # held in this format doesn't keep the named function's call unconstrained
        any_call = "" if alone else _calls(rules, fmt, tools, None, end)
        first_call = _calls(rules, fmt, tools, only, end) if only is not None else any_call
    except Inexpressible as e:  # logged once per tool set (tool_grammar caches the answer)
        log.info("%s tool calls are parsed, not constrained: the format can't hold %s", syntax.name, e)
        return None
    head, tail = (rules.lit(fmt.head) if fmt.head else ""), (rules.lit(fmt.tail) if fmt.tail else "")
    close = rules.lit(end) if end else ""
    more = f"({rules.lit(fmt.sep)} {any_call})*" if parallel and fmt.sep is not None else ""

    def block(first: str) -> str:
        return " ".join(x for x in (head, first, more, tail, close) if x)

    if alone:
        return _compiled(tok, syntax, f"{rules.lit(start)} {block(first_call)}", rules)
    opening = tok.opening_special(start)
    if opening is not None:  # text runs free up to the marker's special token, at the token level
        excluded = ",".join(str(i) for i in sorted({opening, *tok.eos}))
        rules.lines.append(f"text: <[^{excluded}]>*")
        call = rules.rule(f"text {rules.lit(start)} {block(any_call)}")
        rest = "text"
    else:  # the first occurrence of the marker's text ends the free text
        rules.lines.append("TEXT: /(.|\\n)*/")
        rules.lines.append(f"trigger[lazy]: TEXT {rules.lit(start)}")
        rules.lines.append(f"REST: /(.|\\n)*/ & ~/(.|\\n)*{regex_escape(start)}(.|\\n)*/")
        call = rules.rule(f"trigger {block(any_call)}")
        rest = "REST"
    if not end:  # the call runs to the end of the output (mistral): nothing may follow it
        top = f"{rules.lit(start)} {block(first_call)}" if forced else f"{call} | {rest}"
    elif forced:
        first = f"{rules.lit(start)} {block(first_call)}"
        top = f"{first} {call}* {rest}" if parallel else first
    else:
        top = f"{call}* {rest}" if parallel else f"{call} | {rest}"
    return _compiled(tok, syntax, top, rules)


def _compiled(tok: GrammarTokenizer, syntax: ToolSyntax, top: str, rules: Rules) -> str | None:
    """The grammar, if llguidance builds a matcher from it (kept: the request's ``Constraint``
    copies it). One it refuses (a parameter's schema unsatisfiable on its own, say, where the
    whole object schema the gateway checked is satisfiable by leaving it out) leaves the calls
    parsed only: never a 400 for tools the gateway accepted."""
    grammar: str = llguidance.LLMatcher.grammar_from_lark("\n".join([f"start: {top}", *rules.lines]))
    matcher = tok.matcher(grammar)
    if matcher.is_error():
        log.info("%s tool calls are parsed, not constrained: %s", syntax.name, matcher.get_error())
        return None
    return grammar
