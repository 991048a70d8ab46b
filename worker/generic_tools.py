"""The generic tool format: tools for a model whose chat template renders none.

Modelled on llama.cpp's generic tool-call handler: the tool definitions go into the system
message in one fixed layout (``TOOLS_HEADER``), and the model answers either in plain text or
with exactly one JSON object, ``{"tool_call": {"name": NAME, "arguments": {...}}}``; a grammar
(``worker.grammar.tool_grammar``) holds the answer to that shape and each tool's schema. The
conversation's earlier calls are rendered back in the same JSON, and tool results as a user
turn, ``{"tool_result": {"tool_call_id", "name", "content"}}``, so any template that takes
system, user and assistant messages renders them, and a turn re-renders exactly as generated
(the prompt cache stays warm across turns).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

TOOLS_HEADER = (
    "# Tools\n\n"
    "You can call the following tools. Each line is one tool: its name, what it does, and the JSON Schema "
    "of its arguments.\n"
)
TOOLS_FOOTER = (
    "\nTo call a tool, answer with only this JSON object and nothing else:\n"
    '{"tool_call": {"name": "<tool name>", "arguments": {<the arguments>}}}\n'
    "The result comes back in the next user message as a tool_result. "
    "To answer without calling a tool, write plain text."
)


def tools_text(tools: list[dict[str, Any]]) -> str:
    """The tools block of the system message."""
    lines = []
    for t in tools:
        fn = t.get("function") or {}
        entry = {"name": fn.get("name"), "description": fn.get("description") or "", "parameters": fn.get("parameters")}
        lines.append(json.dumps(entry, ensure_ascii=False))
    return TOOLS_HEADER + "\n".join(lines) + "\n" + TOOLS_FOOTER


def call_text(name: str, arguments: Any) -> str:
    """One call as the model writes it in this format (the grammar's layout: ``", "``, ``": "``)."""
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            pass  # not JSON: rendered as the string it is
    return json.dumps({"tool_call": {"name": name, "arguments": arguments}}, ensure_ascii=False)


def generic_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template without tools: the tools block joins the (first) system message,
    assistant calls become their JSON, and tool results (with the user text around them) one
    user turn."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    merged_tail = False  # the last message out holds tool results: user text after them joins it
    block = tools_text(tools) if tools else ""
    for m in messages:
        role = m.get("role")
        content = m.get("content") or ""
        if role in ("system", "developer") and block and not any(o["role"] == "system" for o in out):
            out.append({"role": "system", "content": f"{content}\n\n{block}" if content else block})
            block, merged_tail = "", False
            continue
        if role == "assistant" and m.get("tool_calls"):
            parts = [content] if content else []
            for call in m["tool_calls"]:
                fn = call.get("function") or {}
                names[str(call.get("id"))] = str(fn.get("name"))
                parts.append(call_text(str(fn.get("name")), fn.get("arguments")))
            out.append({"role": "assistant", "content": "\n".join(parts)})
            merged_tail = False
            continue
        is_result = role == "tool"
        if is_result:
            cid = str(m.get("tool_call_id"))
            result = {"tool_call_id": cid, "name": names.get(cid, ""), "content": content}
            content, role = json.dumps({"tool_result": result}, ensure_ascii=False), "user"
        if role == "user" and out and out[-1]["role"] == "user" and (merged_tail or is_result):
            out[-1] = {"role": "user", "content": out[-1]["content"] + "\n\n" + content}
            merged_tail = True
            continue
        out.append({"role": role, "content": content})
        merged_tail = is_result
    if block:
        out.insert(0, {"role": "system", "content": block})
    return out
