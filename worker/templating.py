"""Turning a request's input into prompt tokens.

The model's own chat template (from tokenizer_config.json) renders chat messages, and the tool
definitions when the request offers ``tools``; a model without a template gets a plain
"role: content" transcript so it still answers rather than failing. A ``tool_choice`` that
demands a call is enforced by opening the assistant turn with the start of a call (see
``ToolSyntax.prefill``), so the model can only go on writing one. A model whose template renders
no tools gets them in the generic format (``worker.generic_tools``), per its ``tools`` setting.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from typing import Any

import orjson

from worker.generic_tools import generic_messages
from worker.grammar import GENERIC
from worker.toolcalls import ToolSyntax

_PROBE_TOOL = {"type": "function", "function": {"name": "probe_tool_zq", "description": "", "parameters": {}}}


class TemplateError(ValueError):
    """The input can't be rendered for this model (a client error, not a worker bug)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt: its tokens, the tools offered in it, and the call opening it ends
    with (``prefill``, part of the assistant's turn: the output continues it)."""

    tokens: list[int]
    tools: list[dict[str, Any]] = field(default_factory=list)
    prefill: str = ""
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # the reasoning switches it was rendered with
    syntax: ToolSyntax | None = None  # the tool-call format the answer is read with (None: no tools)


def prompt_tokens(tokenizer: Any, inp: dict[str, Any]) -> list[int]:
    """Tokens for ``messages`` (chat), ``prompt`` (plain text) or ready ``tokens``."""
    return render(tokenizer, inp).tokens


def render(
    tokenizer: Any,
    inp: dict[str, Any],
    syntax: ToolSyntax | None = None,
    params: dict[str, Any] | None = None,
    mode: str = "auto",
) -> Prompt:
    """The prompt for ``inp``; ``syntax`` is the model's native tool-call format (None: it has
    none), ``params`` may hold ``tool_choice`` and ``mode`` is the model's ``tools`` setting."""
    if "tokens" in inp:
        return Prompt([int(t) for t in inp["tokens"]])
    if "prompt" in inp:
        return Prompt(list(tokenizer.encode(str(inp["prompt"]))))
    messages = inp.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TemplateError("input needs messages, prompt or tokens")
    choice = (params or {}).get("tool_choice") or "auto"
    tools = list(inp.get("tools") or []) if choice != "none" else []
    if not tokenizer.has_chat_template:
        if tools:
            raise TemplateError("this model has no chat template, so it can't be offered tools", "tools")
        text = "".join(f"{m['role']}: {m.get('content') or ''}\n" for m in messages) + "assistant: "
        return Prompt(list(tokenizer.encode(text)))
    history = any(isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in messages)
    fmt = tool_format(tokenizer, syntax, mode) if tools or history else "native"
    switches = thinking_kwargs(inp)
    if fmt == "generic":
        _check_choice(choice)
        return _render_generic(tokenizer, messages, tools, switches)
    if tools:
        _check_tools_supported(tokenizer, syntax)
        if fmt == "off":
            raise TemplateError('tools are turned off for this model (its tools setting is "off")', "tools")
    prefill = _prefill(syntax, choice) if tools else ""
    kwargs: dict[str, Any] = {**switches, **({"tools": tools} if tools else {})}
    try:
        rendered = tokenizer.apply_chat_template(
            template_messages(messages), add_generation_prompt=True, tokenize=not prefill, **kwargs
        )
    except Exception as e:  # jinja raises arbitrary errors for inputs a template refuses
        raise TemplateError(f"the model's chat template refused the messages: {e}", "messages") from e
    used = syntax if tools else None
    if prefill:
        text = rendered + _close_reasoning(tokenizer, rendered) + prefill
        return Prompt(list(tokenizer.encode(text, add_special_tokens=False)), tools, prefill, switches, used)
    return Prompt(list(rendered), tools, "", switches, used)


def tool_format(tokenizer: Any, syntax: ToolSyntax | None, mode: str) -> str:
    """ "native", "generic" or "off" for a model's ``tools`` setting: ``auto`` is native when the
    template renders tools and mlx-lm knows the model's call format, else generic."""
    if mode == "auto":
        return "native" if syntax is not None and _template_renders_tools(tokenizer) else "generic"
    return mode


def _render_generic(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]], switches: dict[str, Any]
) -> Prompt:
    """The generic tool format (``worker.generic_tools``): the template sees no ``tools``."""
    try:
        tokens = tokenizer.apply_chat_template(
            generic_messages(template_messages(messages), tools), add_generation_prompt=True, **switches
        )
    except Exception as e:
        raise TemplateError(f"the model's chat template refused the messages: {e}", "messages") from e
    return Prompt(list(tokens), tools, "", switches, GENERIC if tools else None)


def _close_reasoning(tokenizer: Any, rendered: str) -> str:
    """The end marker, when the rendered prompt leaves a reasoning block open (a template that
    opens ``<think>`` in the generation prompt): a forced tool call must not start inside it."""
    if not getattr(tokenizer, "has_thinking", False):
        return ""
    start, end = str(tokenizer.think_start), str(tokenizer.think_end)
    return end if rendered.rfind(start) > rendered.rfind(end) else ""


def thinking_kwargs(inp: dict[str, Any]) -> dict[str, Any]:
    """The chat template's reasoning switches an input sets: ``enable_thinking`` (Qwen3-style
    templates; mlx-lm's wrapper renames it for renderers that call it ``thinking``) and
    ``reasoning_effort`` (gpt-oss-style). A template that reads neither ignores them."""
    out: dict[str, Any] = {}
    if inp.get("enable_thinking") is not None:
        out["enable_thinking"] = bool(inp["enable_thinking"])
    if inp.get("reasoning_effort") is not None:
        out["reasoning_effort"] = str(inp["reasoning_effort"])
    return out


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as HF chat templates expect them: content a string (never null), and a tool
    call's ``function.arguments`` an object (templates render it with ``tojson``)."""
    out = []
    for m in messages:
        m = copy.deepcopy(m)
        if m.get("content") is None:
            m["content"] = ""
        for call in m.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                try:
                    fn["arguments"] = orjson.loads(fn["arguments"])
                except orjson.JSONDecodeError:
                    pass  # not JSON: the template gets the text as it is
        out.append(m)
    return out


def _check_tools_supported(tokenizer: Any, syntax: ToolSyntax | None) -> None:
    """Tools need a template that renders them and a known format to read calls back."""
    if not _template_renders_tools(tokenizer):
        raise TemplateError("this model's chat template does not support tools", "tools")
    if syntax is None:
        raise TemplateError(
            "this model's chat template renders tools but mlx-lm knows no tool-call format for it; "
            "set the model's tool_parser setting",
            "tools",
        )


_RENDERS_TOOLS: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _template_renders_tools(tokenizer: Any) -> bool:
    """Whether offering a tool changes the rendered prompt (a template that ignores ``tools``
    would silently drop them). Checked once per tokenizer."""
    key = tokenizer
    if key not in _RENDERS_TOOLS:
        probe = [{"role": "user", "content": "hi"}]
        try:
            with_tool = tokenizer.apply_chat_template(probe, tools=[_PROBE_TOOL], tokenize=False)
            without = tokenizer.apply_chat_template(probe, tokenize=False)
            _RENDERS_TOOLS[key] = "probe_tool_zq" in with_tool and with_tool != without
        except Exception:
            _RENDERS_TOOLS[key] = False
    return _RENDERS_TOOLS[key]


def _check_choice(choice: Any) -> str | None:
    """The function a ``tool_choice`` names (None for "auto"/"required"); anything else is refused."""
    function = choice.get("name") if isinstance(choice, dict) else None
    if choice not in ("auto", "required") and not isinstance(function, str):
        raise TemplateError(f"tool_choice {choice!r} is not valid", "tool_choice")
    return function


def _prefill(syntax: ToolSyntax | None, choice: Any) -> str:
    """The call opening that enforces ``tool_choice`` ("required" or {"name": NAME})."""
    function = _check_choice(choice)
    if choice == "auto":
        return ""
    opening = syntax.prefill(function) if syntax is not None else None
    if opening is None:
        fmt = syntax.name if syntax is not None else "unknown"
        raise TemplateError(
            f"tool_choice {orjson.dumps(choice).decode()} can't be enforced for this model's tool-call "
            f"format ({fmt}); use 'auto'",
            "tool_choice",
        )
    return opening


def system_prefix(tokenizer: Any, inp: dict[str, Any], prompt: Prompt) -> int:
    """How many leading tokens of ``prompt`` are the system prompt (with the tools a template
    renders there), 0 when there is none or it can't be told: the prompt cache keeps that part
    as an entry of its own. Found as mlx-lm's server does, by rendering the system messages
    before an empty user turn and comparing."""
    messages = inp.get("messages")
    if not isinstance(messages, list) or not tokenizer.has_chat_template:
        return 0
    n = 0
    while n < len(messages) and isinstance(messages[n], dict) and messages[n].get("role") in ("system", "developer"):
        n += 1
    if n == 0 or n == len(messages):
        return 0
    generic = prompt.syntax is GENERIC
    tools_kwarg = {"tools": prompt.tools} if prompt.tools and not generic else {}
    kwargs: dict[str, Any] = {**prompt.template_kwargs, **tools_kwarg}
    head_messages = template_messages(messages[:n])
    if generic:
        head_messages = generic_messages(head_messages, prompt.tools)
    try:
        head = tokenizer.apply_chat_template(
            head_messages + [{"role": "user", "content": ""}], add_generation_prompt=False, **kwargs
        )
    except Exception:  # a template that can't render this cut: no system entry, nothing else lost
        return 0
    tokens = prompt.tokens
    common = 0
    for a, b in zip(head, tokens):
        if a != b:
            break
        common += 1
    return common if 0 < common < len(tokens) else 0
