"""Ollama bodies -> Hearth's wire messages: model names (``:latest``), a request's
``Generate.input`` and ``params`` (options mapped or refused by name). Pure functions; the
output side is gateway/ollama/format.py."""

from __future__ import annotations

from typing import Any

import orjson

from gateway import media
from gateway.bodies import validate
from gateway.errors import HearthError, InvalidRequest
from gateway.ollama.schemas import MAPPED_OPTIONS, ChatRequest, GenerateRequest, Options, GenerationRequest
from gateway.openai.schemas import SamplingFields
from shared.config import Config, ModelConfig
from shared import protocol
from shared.grammar import GrammarError, check_schema

TAG = ":latest"


def resolve_name(config: Config, name: str) -> ModelConfig | None:
    """The model an Ollama name means: as configured (names and aliases), else without ``:latest``
    (Ollama clients add the tag; ``smol`` and ``smol:latest`` are one model)."""
    cfg = config.model(name)
    if cfg is None and name.endswith(TAG):
        cfg = config.model(name.removesuffix(TAG))
    return cfg


def listed_name(name: str) -> str:
    """How ``/api/tags`` names a model: with a tag, as Ollama always does."""
    return name if ":" in name else name + TAG


def supports_format() -> bool:
    """Whether workers take constrained decoding: ``response_format`` among the protocol's
    params (the constrained-decoding work adds it, as ``OUTPUT_PARAMS``). Until then ``format``
    is a 400; after, it passes through as ``Generate.params["response_format"]``."""
    known = (*protocol.GENERATE_PARAMS, *getattr(protocol, "OUTPUT_PARAMS", ()))
    return "response_format" in known


def check_request(req: GenerationRequest, cfg: ModelConfig, images: int, policy: str, thinks: bool) -> None:
    """What the model can't honour: images under the ``reject`` policy (gateway.media; Hearth's
    models read text only), ``think`` on a model that does not think (``thinks``: its chat
    template has reasoning markers), ``format`` until workers take constrained decoding."""
    if images and policy != "placeholder":
        raise InvalidRequest(f"images: {media.refusal('image')}", param="images")
    if req.think not in (None, False) and not thinks:
        raise InvalidRequest(f"think: '{req.model}' does not support thinking", param="think")
    if isinstance(req, GenerateRequest) and req.raw and req.think is not None:
        raise InvalidRequest("think: a raw prompt is not templated, so thinking can't be switched", param="think")
    if req.format not in (None, "") and not supports_format():
        raise InvalidRequest(
            "format: constrained output (json or a JSON Schema) is not supported by this Hearth yet", param="format"
        )
    if isinstance(req.format, dict):  # a schema the grammar compiler can't enforce: a 400 before admission
        try:
            check_schema(req.format, "format")
        except GrammarError as e:
            raise InvalidRequest(str(e), param="format") from None


def params_for(req: GenerationRequest, cfg: ModelConfig, context: int) -> dict[str, Any]:
    """The model's defaults overlaid with the request's ``options``, in Hearth's names; the
    values are checked by the same ranges as the OpenAI API's, errors naming the option."""
    params = dict(cfg.defaults)
    opts = req.options or Options()
    if opts.num_ctx is not None and context and opts.num_ctx > context:
        raise InvalidRequest(
            f"options.num_ctx: {opts.num_ctx} is more than the {context}-token context of '{cfg.name}'",
            param="options.num_ctx",
        )
    for name, hearth in MAPPED_OPTIONS.items():
        value = getattr(opts, name)
        if value is None:
            continue
        if name == "num_predict":
            if value > 0:
                params["max_tokens"] = value
            else:  # -1 / -2: until the end of sequence or the context is full
                params.pop("max_tokens", None)
        elif name == "repeat_last_n":
            if value == 0:  # Ollama: 0 turns the repetition penalties off
                for key in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
                    params.pop(key, None)
            else:
                params[hearth] = value if value > 0 else (opts.num_ctx or context or 2**31 - 1)
        elif name == "seed":
            if value >= 0:
                params[hearth] = value
            else:  # Ollama (llama.cpp): -1 is a random seed each time
                params.pop(hearth, None)
        else:
            params[hearth] = value
    checkable = {k: v for k, v in params.items() if k in SamplingFields.model_fields and k != "stop"}
    try:
        validate(SamplingFields, {"model": cfg.name, **checkable})
    except HearthError as e:
        back = {v: k for k, v in MAPPED_OPTIONS.items()}
        param = f"options.{back.get(e.param or '', e.param)}"
        raise InvalidRequest(f"{param}: {e.message.split(': ', 1)[-1]}", param=param) from None
    if req.logprobs:
        params["logprobs"] = req.top_logprobs or 0
    if req.format == "json":
        params["response_format"] = {"type": "json_object"}
    elif isinstance(req.format, dict):
        params["response_format"] = {"type": "json_schema", "schema": req.format}
    return params


def thinking_switches(req: GenerationRequest) -> dict[str, Any]:
    """``think`` as the chat template's switches (they shape the prompt): true/false turn
    thinking on or off; a level ("high", "medium", "low") turns it on with that effort."""
    if req.think is None:
        return {}
    if isinstance(req.think, bool):
        return {"enable_thinking": req.think}
    return {"enable_thinking": True, "reasoning_effort": req.think}


def with_notes(text: str, images: list[str] | None) -> str:
    """Under the ``placeholder`` policy: each image becomes a note after the message's text."""
    return "\n".join([text, *(media.note("image") for _ in images or [])]) if images else text


def chat_input(req: ChatRequest) -> dict[str, Any]:
    """Ollama messages in the worker's (OpenAI) shape: an assistant's tool calls get ids (and
    arguments as JSON text); a tool result answers the latest call of its ``tool_name``; an
    earlier turn's ``thinking`` goes back as ``reasoning_content``; images (only here under the
    ``placeholder`` policy, see ``check_request``) become notes."""
    messages: list[dict[str, Any]] = []
    call_ids: dict[str, str] = {}
    n = 0
    for m in req.messages:
        msg: dict[str, Any] = {"role": m.role, "content": with_notes(m.content, m.images)}
        if m.thinking is not None and m.role == "assistant":
            msg["reasoning_content"] = m.thinking
        if m.tool_calls:
            calls = []
            for c in m.tool_calls:
                cid = c.id or f"call_{n}"
                n += 1
                call_ids[c.function.name] = cid
                calls.append(
                    {
                        "id": cid,
                        "type": "function",
                        "function": {"name": c.function.name, "arguments": orjson.dumps(c.function.arguments).decode()},
                    }
                )
            msg["tool_calls"] = calls
        if m.role == "tool":
            msg["tool_call_id"] = m.tool_call_id or call_ids.get(m.tool_name or "", m.tool_name or f"call_{n}")
        messages.append(msg)
    inp: dict[str, Any] = {"messages": messages}
    if req.tools:
        inp["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
    return {**inp, **thinking_switches(req)}


def generate_input(req: GenerateRequest) -> dict[str, Any]:
    """``raw``: the prompt as it is; otherwise the model's chat template around ``system`` and
    the prompt as one user turn (as Ollama's default templates do)."""
    if req.suffix:
        raise InvalidRequest("suffix: fill-in-the-middle is not supported by Hearth", param="suffix")
    if req.context:
        raise InvalidRequest(
            "context: the context parameter is deprecated and not supported; send the conversation to /api/chat",
            param="context",
        )
    if req.template is not None:
        raise InvalidRequest(
            "template: Hearth renders the model's own chat template; send a templated prompt with raw: true",
            param="template",
        )
    if req.raw:
        if req.images:
            raise InvalidRequest("images: a raw prompt gets no template, so no image notes", param="images")
        if req.system:
            raise InvalidRequest("system: a raw prompt gets no template, so no system prompt", param="system")
        return {"prompt": req.prompt}
    messages = [{"role": "system", "content": req.system}] if req.system else []
    user = {"role": "user", "content": with_notes(req.prompt, req.images)}
    return {"messages": [*messages, user], **thinking_switches(req)}
