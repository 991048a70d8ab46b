"""Tool calls in a model's output: held back while generated, parsed when complete.

A model writes a tool call as text between its family's markers (``<tool_call>`` …
``</tool_call>`` for Qwen/Hermes-style JSON calls). mlx-lm knows each family's markers and parser
(``mlx_lm.tool_parsers``, picked from the chat template) and its ``TextStateMachine`` finds the
markers in streamed text, holding back a tail that may still become one. ``ToolCallStream`` uses
both: text outside a call is released as it comes; a call's text is held until its end marker and
then parsed. A call that parses into a call of an offered function becomes a tool call; anything
else is handed back as the plain text the model wrote, so a malformed call is never an error.
"""

from __future__ import annotations

import importlib
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlx_lm.generate import TextStateMachine

ToolCall = dict[str, Any]  # {"index", "id", "name", "arguments"}: shared.protocol.Delta.tool_calls
Event = str | ToolCall  # released text, or one complete tool call

_TOOL = "tool"
_TEXT = "normal"
_PARSER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ToolSyntax:
    """How one model family writes tool calls: mlx-lm's markers and parser for it."""

    name: str  # the mlx_lm.tool_parsers module, e.g. "json_tools"
    start: str
    end: str  # "": a call runs to the end of the output (mistral)
    parse: Callable[[str, Any], Any]

    @classmethod
    def named(cls, name: str) -> ToolSyntax:
        """The parser ``mlx_lm.tool_parsers.<name>`` (a model's ``tool_parser`` setting)."""
        if not _PARSER_NAME.match(name):
            raise ValueError(f"tool_parser {name!r} is not a parser name")
        try:
            module = importlib.import_module(f"mlx_lm.tool_parsers.{name}")
        except ImportError:
            raise ValueError(f"tool_parser {name!r}: mlx-lm has no such tool parser") from None
        return cls(name, module.tool_call_start, module.tool_call_end, module.parse_tool_call)

    @classmethod
    def of(cls, tokenizer: Any, override: str | None = None) -> ToolSyntax | None:
        """The syntax set by ``override``, else the one mlx-lm inferred for this tokenizer."""
        if override:
            return cls.named(override)
        if not getattr(tokenizer, "has_tool_calling", False):
            return None
        name = str(getattr(tokenizer, "init_kwargs", {}).get("tool_parser_type", "inferred"))
        return cls(name, tokenizer.tool_call_start, tokenizer.tool_call_end or "", tokenizer.tool_parser)

    def prefill(self, function: str | None) -> str | None:
        """The opening of an assistant turn that makes the model write a call (to ``function``,
        or to one of its choosing when None); None when this syntax has no known opening.
        Where a format's opening does not name the function (mistral, longcat), it is the start
        marker alone and the grammar (``worker.toolformats``) holds the call to ``function``."""
        if self.name == "json_tools":
            if function is None:
                return self.start + '\n{"name": "'
            return self.start + '\n{"name": ' + json.dumps(function, ensure_ascii=False) + ', "arguments": '
        opening = _OPENINGS.get(self.name)
        if opening is None:
            return None
        before, after = opening
        return self.start + before + ("" if function is None or after is None else function + after)


# (text after the start marker, text after the function's name) for a forced call; None: the
# opening can't name the function (the grammar does)
_OPENINGS: dict[str, tuple[str, str | None]] = {
    "qwen3_coder": ("\n<function=", ">\n"),
    "glm47": ("", ""),
    "laguna": ("", ""),
    "longcat": ("", None),
    "minimax_m2": ('\n<invoke name="', '">\n'),
    "minicpm5": ('"', '">'),
    "muse_spark": ('\n<atem:invoke name="', '">\n'),
    "kimi_k2": ("<|tool_call_begin|>functions.", ":"),
    "kimi_k3": ('\n<|open|>call tool="', '" index="'),
    "gemma4": ("call:", "{"),
    "function_gemma": ("call:", "{"),
    "pythonic": ("[", "("),
    "mistral": ("", None),
}


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


class ToolCallStream:
    """Feed released text, get events: text to send now and complete tool calls, in order.

    ``tools`` are the offered OpenAI-style function tools (a call to another name is text);
    ``prefill`` is the call opening the prompt already ended with (tool_choice), so the output
    starts inside a call; ``parallel`` False ends the stream (``closed``) after the first call.
    """

    def __init__(
        self, syntax: ToolSyntax, tools: list[dict[str, Any]], prefill: str = "", parallel: bool = True
    ) -> None:
        self.syntax = syntax
        self.tools = tools
        self.names = {t["function"]["name"] for t in tools if isinstance(t.get("function"), dict)}
        self.parallel = parallel
        transitions: dict[str, list[tuple[str, str]]] = {_TEXT: [(syntax.start, _TOOL)]}
        transitions[_TOOL] = [(syntax.end, _TEXT)] if syntax.end else []
        in_call = prefill.startswith(syntax.start)
        self._state = TextStateMachine(transitions).make_state(_TOOL if in_call else _TEXT)
        self._call = prefill[len(syntax.start) :] if in_call else ""  # text of the call being written
        self.calls = 0  # tool calls handed out so far
        self.closed = False  # parallel is off and a call was made: the output is complete
        self.cut: str | None = None  # the text of a call the output's end cut off (see finish)

    @property
    def in_call(self) -> bool:
        return bool(self._state[0] == _TOOL)

    def push(self, text: str) -> list[Event]:
        """New text from the detokenizer; returns what may be sent now."""
        if self.closed or not text:
            return []
        was = self._state[0]
        self._state, segments = TextStateMachine.split(self._state, text)
        return self._events(was, segments)

    def finish(self, cut: bool = False) -> list[Event]:
        """The output ended: release held-back text and settle a call without its end marker
        (the only way a call ends for a syntax with no end marker). ``cut``: the output was cut
        short (``max_tokens``); a call it cut that does not parse is left out, not sent as text,
        and its text kept in ``cut_call``."""
        if self.closed:
            return []
        was = self._state[0]
        self._state, held, _ = TextStateMachine.flush(self._state)
        if cut and was == _TEXT and held and self.syntax.start.startswith(held):
            self.cut, held = held, ""  # cut inside the call's opening marker
        events = self._events(was, [(was, held)])
        if self.in_call:
            body = self._call
            settled = self._settle(ended=False)
            if cut and settled and isinstance(settled[0], str):
                self.cut = self.syntax.start + body
                settled = []
            events.extend(settled)
        return [e for e in events if e != ""]

    def _events(self, was: str, segments: list[tuple[str, str]]) -> list[Event]:
        events: list[Event] = []
        prev = was
        for i, (state, text) in enumerate(segments):
            if i and prev == _TOOL:  # the end marker closed the call
                events.extend(self._settle(ended=True))
                if self.closed:
                    return events
            if state == _TOOL:
                self._call += text
            elif text:
                events.append(text)
            prev = state
        return events

    def _settle(self, ended: bool) -> list[Event]:
        """The call's text is complete: a tool call if it parses into calls of offered
        functions, else the text as written (markers included)."""
        body, self._call = self._call, ""
        calls = self._parse(body)
        if calls is None:
            return [self.syntax.start + body + (self.syntax.end if ended else "")]
        if not self.parallel:
            calls = calls[:1]
            self.closed = True
        out: list[Event] = []
        for name, arguments in calls:
            out.append({"index": self.calls, "id": new_call_id(), "name": name, "arguments": arguments})
            self.calls += 1
        return out

    def _parse(self, body: str) -> list[tuple[str, str]] | None:
        try:
            parsed = self.syntax.parse(body, self.tools)
        except Exception:  # parsers raise whatever their format's decoder raises
            return None
        items = parsed if isinstance(parsed, list) else [parsed]
        calls = []
        for item in items:
            call = _call_of(item)
            if call is None or call[0] not in self.names:
                return None
            calls.append(call)
        return calls or None


def _call_of(item: Any) -> tuple[str, str] | None:
    """(name, arguments as JSON object text) from a parser's result, or None if it is no call."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    args = item.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    try:  # a number too large for a float (1e400) decodes as inf, which JSON can't carry
        return item["name"], json.dumps(args, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return None
