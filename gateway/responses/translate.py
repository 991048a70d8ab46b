"""A Responses request -> the worker's chat ``Generate.input`` and ``params``.

The input becomes the same OpenAI-shaped messages chat completions sends (``gateway/openai/
translate.py``): ``instructions`` and the leading system/developer messages make one system
message (templates want one, first); an assistant message and the ``function_call`` items after
it make one assistant turn with ``tool_calls``; a ``function_call_output`` is a ``tool``
message; a reasoning item's text goes with the assistant turn after it as ``reasoning_content``
(chat completions' field), for templates that render an earlier turn's reasoning. A
``previous_response_id`` puts the stored conversation first, so the prompt starts with the
tokens the worker's KV cache already holds. ``reasoning.effort`` sets the template's switches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from gateway.openai.translate import params_for
from gateway.responses.schemas import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    InputItem,
    MessageItem,
    NamedFunctionChoice,
    NamespaceTool,
    OtherTool,
    ReasoningItem,
    ResponsesRequest,
    content_text,
    omitted,
)
from shared.config import ModelConfig

JOIN = "\n\n"  # between the parts of the one system message
NS_SEP = "."  # a namespace's function "f" of namespace "ns" is offered as "ns.f"

Message = dict[str, Any]


@dataclass(frozen=True)
class Prepared:
    """What a request becomes: the worker's input and params, the conversation it continues
    (kept in the store beside the answer), the tools left out of the prompt, the namespaces
    (to split calls back into ``namespace`` and ``name``), and the prefix-affinity key."""

    input: dict[str, Any]
    params: dict[str, Any]
    conversation: list[Message]  # the messages after the system message, this request's included
    system: str
    left_out: list[str] = field(default_factory=list)
    namespaces: frozenset[str] = frozenset()
    affinity: str | None = None
    omitted: int = 0  # images and files replaced by a note (the placeholder policy, gateway.media)


def _function(t: FunctionTool, name: str | None = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name or t.name}
    if t.description is not None:
        fn["description"] = t.description
    fn["parameters"] = t.parameters if t.parameters is not None else {"type": "object", "properties": {}}
    if t.strict is not None:
        fn["strict"] = t.strict
    return {"type": "function", "function": fn}


def _left_out_name(t: OtherTool, namespace: str | None = None) -> str:
    name = f"{t.type}:{t.name}" if t.name else t.type
    return f"{namespace}{NS_SEP}{name}" if namespace else name


def tools_for(req: ResponsesRequest) -> tuple[list[dict[str, Any]], list[str], frozenset[str]]:
    """The function tools the model is offered (namespaces flattened), the names of the tools
    left out of the prompt, and the namespaces."""
    offered: list[dict[str, Any]] = []
    left_out: list[str] = []
    namespaces: set[str] = set()
    for t in req.tools or []:
        if isinstance(t, FunctionTool):
            offered.append(_function(t))
        elif isinstance(t, NamespaceTool):
            namespaces.add(t.name)
            for inner in t.tools:
                if isinstance(inner, FunctionTool):
                    offered.append(_function(inner, f"{t.name}{NS_SEP}{inner.name}"))
                else:
                    left_out.append(_left_out_name(inner, t.name))
        else:
            left_out.append(_left_out_name(t))
    return offered, left_out, frozenset(namespaces)


def call_name(name: str, namespace: str | None) -> str:
    return f"{namespace}{NS_SEP}{name}" if namespace else name


def split_name(name: str, namespaces: frozenset[str]) -> tuple[str, str | None]:
    """A called function's (name, namespace): ``ns.f`` of an offered namespace is ("f", "ns")."""
    head, sep, tail = name.partition(NS_SEP)
    if sep and head in namespaces:
        return tail, head
    return name, None


def input_messages(req: ResponsesRequest) -> tuple[list[str], list[Message]]:
    """The request's own input: the system parts at its head, then the chat messages."""
    items = [MessageItem(role="user", content=req.input)] if isinstance(req.input, str) else req.input
    return item_messages(items)


_ITEMS: TypeAdapter[list[InputItem]] = TypeAdapter(list[InputItem])


def output_messages(output: list[dict[str, Any]]) -> list[Message]:
    """A response's output items as the assistant turn they are in a later prompt."""
    system, messages = item_messages(_ITEMS.validate_python(output))
    return messages


def item_messages(items: list[Any]) -> tuple[list[str], list[Message]]:
    """Input items as chat messages; system and developer messages in front of the others are
    returned apart (they join ``instructions`` in the one system message)."""
    system: list[str] = []
    messages: list[Message] = []
    reasoning: list[str] = []  # an earlier turn's reasoning, for the assistant turn that follows it

    def assistant(msg: Message) -> Message:
        if reasoning:
            msg["reasoning_content"] = "".join(reasoning)
            reasoning.clear()
        return msg

    for item in items:
        if isinstance(item, ReasoningItem):
            parts = item.content if item.content else item.summary
            reasoning.append("".join(p.text for p in parts))
        elif isinstance(item, MessageItem):
            text = content_text(item.content)
            if item.role in ("system", "developer"):
                if not messages:
                    system.append(text)
                else:
                    messages.append({"role": "system", "content": text})
            elif item.role == "assistant":
                messages.append(assistant({"role": "assistant", "content": text}))
            else:
                messages.append({"role": item.role, "content": text})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": call_name(item.name, item.namespace), "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not reasoning:
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append(assistant({"role": "assistant", "content": "", "tool_calls": [call]}))
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": content_text(item.output)})
    return system, messages


def params(req: ResponsesRequest, cfg: ModelConfig, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The model's defaults overridden by the request, as chat completions does; plus logprobs,
    tool choice and the output format."""
    p = params_for(req, cfg)
    if req.logprobs_wanted():
        p["logprobs"] = req.top_logprobs or 0
    if tools:
        choice = req.tool_choice or "auto"
        p["tool_choice"] = {"name": choice.name} if isinstance(choice, NamedFunctionChoice) else choice
        if req.parallel_tool_calls is not None:
            p["parallel_tool_calls"] = req.parallel_tool_calls
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        p["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":  # the wire shape constrained decoding reads
        p["response_format"] = {"type": "json_schema", "schema": fmt.schema_}
    return p


def prepare(req: ResponsesRequest, cfg: ModelConfig, previous: list[Message] | None = None) -> Prepared:
    """The worker's input for ``req``; ``previous`` is the stored conversation it continues."""
    tools, left_out, namespaces = tools_for(req)
    system_parts, messages = input_messages(req)
    if req.instructions:
        system_parts.insert(0, req.instructions)
    system = JOIN.join(p for p in system_parts if p)
    conversation = [*(previous or []), *messages]
    head: list[Message] = [{"role": "system", "content": system}] if system else []
    # an empty input (a client's probe) is an empty user turn: the model still answers
    body = conversation or [{"role": "user", "content": ""}]
    inp: dict[str, Any] = {"messages": head + body}
    if tools:
        inp["tools"] = tools
    effort = req.reasoning.effort if req.reasoning is not None else None
    if effort is not None:  # the chat template's switches, as chat completions' reasoning_effort sets them
        inp["enable_thinking"] = effort != "none"
        inp["reasoning_effort"] = effort
    items = req.input if isinstance(req.input, list) else []
    replaced = sum(
        omitted(i.content if isinstance(i, MessageItem) else i.output)
        for i in items
        if isinstance(i, (MessageItem, FunctionCallOutputItem))
    )
    return Prepared(
        omitted=replaced,
        input=inp,
        params=params(req, cfg, tools),
        conversation=conversation,
        system=system,
        left_out=left_out,
        namespaces=namespaces,
        affinity=req.prompt_cache_key,
    )


def echo(req: ResponsesRequest, tools: Any, cfg: ModelConfig) -> dict[str, Any]:
    """The request's settings as the response object repeats them (``tools`` as sent)."""
    fmt = req.text.format if req.text is not None and req.text.format is not None else None
    choice: Any = req.tool_choice or "auto"
    if not isinstance(choice, str):
        choice = choice.model_dump()
    return {
        "model": req.model,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls,
        "metadata": req.metadata or {},
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "prompt_cache_key": req.prompt_cache_key,
        "reasoning": {
            "effort": req.reasoning.effort if req.reasoning else None,
            "summary": req.reasoning.summary if req.reasoning else None,
        },
        "safety_identifier": req.safety_identifier,
        "service_tier": "default",
        "store": req.store,
        "temperature": req.temperature if req.temperature is not None else cfg.defaults.get("temperature", 1.0),
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
        "tool_choice": choice,
        "tools": tools or [],
        "top_logprobs": req.top_logprobs,
        "top_p": req.top_p if req.top_p is not None else cfg.defaults.get("top_p", 1.0),
        "truncation": "disabled",
        "user": req.user,
        "background": False,
    }
