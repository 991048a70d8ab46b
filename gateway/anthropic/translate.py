"""Anthropic bodies <-> Hearth's wire messages.

Inbound, a Messages request becomes the OpenAI-shaped ``Generate.input`` the worker already
templates (``{"messages": [...], "tools": [...]}``) and its ``params``. Outbound, ``delta`` and
``done`` become a ``message`` object or the stream's events, built by one ``Blocks`` builder so
the two agree block for block.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from gateway.anthropic.schemas import (
    InputMessage,
    MediaBlock,
    MessagesRequest,
    PromptFields,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from gateway.errors import WorkerFailed
from shared.config import ModelConfig
from shared.protocol import Delta, Done

BILLING_HEADER = "x-anthropic-billing-header:"
JOIN = "\n\n"  # between text blocks of one system prompt or message
TOOL_ERROR_PREFIX = "Error: "  # a tool_result with is_error: true
TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}  # "tool": {"name": NAME}


# -- request -> wire -------------------------------------------------------------------------


def system_text(system: str | list[TextBlock] | None, strip_billing: bool) -> str:
    """The system prompt as one text. Claude Code's first block, ``x-anthropic-billing-header: …``,
    differs on every request; left in, it would make every prompt new to the KV cache."""
    if system is None or isinstance(system, str):
        return system or ""
    blocks = [b.text for b in system if not (strip_billing and b.text.lstrip().startswith(BILLING_HEADER))]
    return JOIN.join(blocks)


def _message(m: InputMessage) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: tool results become ``tool`` messages (in their
    place among the text), tool uses an assistant message's ``tool_calls``."""
    if isinstance(m.content, str):
        return [{"role": m.role, "content": m.content}]
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thoughts: list[str] = []
    for b in m.content:
        if isinstance(b, TextBlock):
            texts.append(b.text)
        elif isinstance(b, MediaBlock):  # only under the placeholder policy (schemas refuse it otherwise)
            texts.append(b.note())
        elif isinstance(b, ThinkingBlock):
            if b.type == "thinking" and m.role == "assistant":
                thoughts.append(b.thinking)
        elif isinstance(b, ToolUseBlock):
            arguments = orjson.dumps(b.input).decode()
            calls.append({"id": b.id, "type": "function", "function": {"name": b.name, "arguments": arguments}})
        elif isinstance(b, ToolResultBlock):
            if texts:  # text before a result keeps its place
                out.append({"role": m.role, "content": JOIN.join(texts)})
                texts = []
            text = b.text()
            if b.is_error:
                text = TOOL_ERROR_PREFIX + text
            out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": text})
    if texts or calls or thoughts or not out:
        msg: dict[str, Any] = {"role": m.role, "content": JOIN.join(texts)}
        if thoughts:  # the template re-renders it between its think markers, as the model wrote it
            msg["reasoning_content"] = "".join(thoughts)
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def omitted_media(req: PromptFields) -> int:
    """How many image and document blocks (tool results' included) became notes."""
    n = 0
    for m in req.messages:
        for b in m.content if isinstance(m.content, list) else []:
            n += 1 if isinstance(b, MediaBlock) else b.omitted() if isinstance(b, ToolResultBlock) else 0
    return n


def prompt_input(req: PromptFields, cfg: ModelConfig) -> dict[str, Any]:
    """``Generate.input`` for a request; ``/v1/messages/count_tokens`` counts exactly this."""
    messages: list[dict[str, Any]] = []
    system = system_text(req.system, cfg.strip_billing_header)
    if system:
        messages.append({"role": "system", "content": system})
    for m in req.messages:
        messages.extend(_message(m))
    inp: dict[str, Any] = {"messages": messages}
    if req.tools:
        inp["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description is not None else {}),
                    "parameters": t.input_schema,
                },
            }
            for t in req.tools
        ]
    if req.thinking is not None:  # the chat template's switch (it shapes the prompt, so it is input)
        inp["enable_thinking"] = req.thinking.type != "disabled"
    return inp


def params_for(req: MessagesRequest, cfg: ModelConfig) -> dict[str, Any]:
    """The model's default parameters, overridden by what the request sets. ``max_tokens`` is
    clamped by the worker to the room the context leaves."""
    params = dict(cfg.defaults)
    params["max_tokens"] = req.max_tokens
    for name in ("temperature", "top_p", "top_k", "speculative"):
        value = getattr(req, name)
        if value is not None:
            params[name] = value
    if req.stop_sequences is not None:
        params["stop"] = list(req.stop_sequences)
    if req.tools and req.tool_choice is not None:
        tc = req.tool_choice
        params["tool_choice"] = {"name": tc.name} if tc.type == "tool" else TOOL_CHOICE[tc.type]
        if tc.disable_parallel_tool_use:
            params["parallel_tool_calls"] = False
    schema = req.output_schema()
    if schema is not None:
        params["response_format"] = {"type": "json_schema", "schema": schema}
    if req.thinking is not None and req.thinking.budget_tokens is not None:
        params["thinking_budget"] = req.thinking.budget_tokens
    return params


# -- wire -> response ------------------------------------------------------------------------


def stop_reason(done: Done) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for a finished generation."""
    if done.finish_reason == "tool_calls":
        return "tool_use", None
    if done.finish_reason == "length":
        return "max_tokens", None
    if done.finish_reason == "stop" and done.stop:
        return "stop_sequence", done.stop
    return "end_turn", None  # end of sequence; also the loop guard's stop


def usage(done: Done | None) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` are the prompt tokens computed afresh, the rest came
    from the worker's KV prompt cache (their sum is what ``count_tokens`` says)."""
    u = done.usage if done is not None else {}
    cached = u.get("cached_tokens", 0)
    out = {
        "input_tokens": u.get("prompt_tokens", 0) - cached,
        "output_tokens": u.get("completion_tokens", 0),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }
    if u.get("resumed"):
        out["resumed"] = u["resumed"]  # times the generation was resumed after its worker died
    return out


def tool_use_id(call_id: str) -> str:
    return call_id if call_id.startswith("toolu_") else f"toolu_{call_id}"


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments (complete JSON text from the worker) as the block's ``input``."""
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise WorkerFailed(f"the model's tool call arguments are not a JSON object: {arguments[:200]!r}")
    return value


Event = tuple[str, dict[str, Any]]


def signature(thinking: str) -> str:
    """A thinking block's ``signature``: Anthropic's is an opaque proof of origin; Hearth's is
    the SHA-256 of the text (an integrity digest a client can check; Hearth does not verify
    signatures sent back)."""
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


class Blocks:
    """Builds a message's content blocks from deltas, and the stream events that say the same:
    consecutive reasoning makes one thinking block (its ``signature_delta`` just before it
    closes), consecutive text one text block, each tool call its own tool_use block."""

    def __init__(self) -> None:
        self.content: list[dict[str, Any]] = []
        self._open: str | None = None  # the kind of the open block: "text" or "thinking"
        self._parts: list[str] = []  # the open block's pieces, joined when it closes

    def delta(self, ev: Delta) -> list[Event]:
        """A worker delta's events, in its order: reasoning, text, tool calls."""
        return [*self.thinking(ev.reasoning), *self.text(ev.text), *self.tool_calls(ev.tool_calls or [])]

    def text(self, text: str) -> list[Event]:
        return self._piece("text", text)

    def thinking(self, text: str) -> list[Event]:
        return self._piece("thinking", text)

    def _piece(self, kind: str, text: str) -> list[Event]:
        if not text:
            return []
        events: list[Event] = []
        if self._open != kind:
            events = self._close()
            start = {"type": kind, kind: ""} if kind == "text" else {"type": kind, kind: "", "signature": ""}
            self.content.append(dict(start))
            self._open = kind
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": len(self.content) - 1, "content_block": start},
                )
            )
        self._parts.append(text)
        delta = {"type": f"{kind}_delta", kind: text}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": len(self.content) - 1, "delta": delta})
        )
        return events

    def tool_calls(self, calls: list[dict[str, Any]]) -> list[Event]:
        if not calls:
            return []
        events = self._close()
        for call in calls:
            block = {"type": "tool_use", "id": tool_use_id(str(call.get("id", ""))), "name": str(call.get("name", ""))}
            inp = tool_input(str(call.get("arguments", "")))
            self.content.append({**block, "input": inp})
            i = len(self.content) - 1
            delta = {"type": "input_json_delta", "partial_json": orjson.dumps(inp).decode()}
            events += [
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": i, "content_block": {**block, "input": {}}},
                ),
                ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}),
                ("content_block_stop", {"type": "content_block_stop", "index": i}),
            ]
        return events

    def finish(self) -> list[Event]:
        return self._close()

    def _close(self) -> list[Event]:
        kind, self._open = self._open, None
        if kind is None:
            return []
        block, i = self.content[-1], len(self.content) - 1
        block[kind] = "".join(self._parts)
        self._parts = []
        events: list[Event] = []
        if kind == "thinking":
            block["signature"] = signature(block[kind])
            delta = {"type": "signature_delta", "signature": block["signature"]}
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}))
        return [*events, ("content_block_stop", {"type": "content_block_stop", "index": i})]


class MessageShape:
    """One response's ``message`` object and the events around its blocks (shared id and model)."""

    def __init__(self, rid: str, model: str) -> None:
        self.id = f"msg_{rid}"
        self.model = model

    def message(self, content: list[dict[str, Any]], done: Done | None) -> dict[str, Any]:
        reason, sequence = stop_reason(done) if done is not None else (None, None)
        out = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": usage(done),
        }
        if done is not None and done.note:  # Hearth's extension: a tool call cut off by max_tokens
            out["note"] = done.note
        return out

    def start(self) -> Event:
        """``message_start``: the prompt's token counts are not known before ``done`` (they
        come in ``message_delta``), so its usage is zeros."""
        return "message_start", {"type": "message_start", "message": self.message([], None)}

    def end(self, done: Done) -> list[Event]:
        reason, sequence = stop_reason(done)
        return [
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": reason,
                        "stop_sequence": sequence,
                        **({"note": done.note} if done.note else {}),
                    },
                    "usage": usage(done),
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
