"""OpenAI bodies <-> Hearth's wire messages: each choice's ``input`` and ``params``, and the
response objects and stream chunks (chat and text completions) built from ``delta`` and ``done``."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from gateway.bodies import validate
from gateway.errors import HearthError
from gateway.openai.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from gateway.record import totals
from gateway.session import Choice
from shared.config import ConfigError, ModelConfig
from shared.protocol import GENERATE_PARAMS, Delta, Done


def check_defaults(cfg: ModelConfig) -> None:
    """A model's ``defaults`` must be request parameters with valid values: checked once at
    start by the same schema as requests, so a typo fails the start, not every request."""
    unknown = set(cfg.defaults) - set(GENERATE_PARAMS)
    if unknown:
        raise ConfigError(f"model {cfg.name}: unknown default parameter(s) {', '.join(sorted(unknown))}")
    try:
        validate(SamplingFields, {"model": cfg.name, **cfg.defaults})
    except HearthError as e:
        raise ConfigError(f"model {cfg.name}: defaults: {e.message}") from None


def params_for(req: SamplingFields, cfg: ModelConfig) -> dict[str, Any]:
    """The model's default sampling parameters, overridden by what the request sets."""
    params = dict(cfg.defaults)
    for name in GENERATE_PARAMS:
        value = getattr(req, name)
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if value is not None:
            params[name] = value
    if isinstance(req, ChatCompletionRequest) and req.logprobs:
        params["logprobs"] = req.top_logprobs or 0
    if isinstance(req, ChatCompletionRequest) and req.tools:
        choice = req.tool_choice or "auto"
        params["tool_choice"] = choice if isinstance(choice, str) else {"name": choice.function.name}
        if req.parallel_tool_calls is not None:
            params["parallel_tool_calls"] = req.parallel_tool_calls
    if isinstance(req, CompletionRequest) and req.logprobs is not None:
        params["logprobs"] = req.logprobs
    fmt = req.response_format.wire() if req.response_format is not None else None
    if fmt is not None:
        params["response_format"] = fmt
    return params


def expand(inputs: list[dict[str, Any]], params: dict[str, Any], n: int) -> list[Choice]:
    """``n`` choices per input, indexed as OpenAI does (prompt i, sample j -> i * n + j). A seeded
    request gives each extra sample its own seed, so the n answers differ but reproduce."""
    specs = []
    for i, inp in enumerate(inputs):
        for j in range(n):
            p = params
            if j and params.get("seed") is not None:
                p = {**params, "seed": (params["seed"] + j) % 2**64}
            specs.append(Choice(i * n + j, i, inp, p))
    return specs


def chat_input(req: ChatCompletionRequest) -> dict[str, Any]:
    """``messages`` (with earlier tool calls and tool results) and the offered ``tools``."""
    messages = []
    for m in req.messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.tool_calls:
            msg["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        if m.reasoning_content is not None:  # templates re-render it where the model wrote it
            msg["reasoning_content"] = m.reasoning_content
        messages.append(msg)
    inp: dict[str, Any] = {"messages": messages}
    if req.tools:
        inp["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
    if req.reasoning_effort is not None:  # the chat template's switches (they shape the prompt)
        inp["enable_thinking"] = req.reasoning_effort != "none"
        inp["reasoning_effort"] = req.reasoning_effort
    return inp


def omitted_media(req: ChatCompletionRequest) -> int:
    """How many image or file parts ``chat_input`` replaced by a note (gateway.media)."""
    return sum(m.omitted() for m in req.messages)


def openai_tool_calls(calls: list[dict[str, Any]], streaming: bool = False) -> list[dict[str, Any]]:
    """Wire tool calls in OpenAI's shape (with ``index`` in stream chunks)."""
    return [
        {
            **({"index": c["index"]} if streaming else {}),
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for c in calls
    ]


def completion_inputs(req: CompletionRequest) -> list[dict[str, Any]]:
    prompts = req.prompt if isinstance(req.prompt, list) else [req.prompt]
    return [{"prompt": p} for p in prompts]


def usage(dones: list[tuple[Choice, Done]]) -> dict[str, Any]:
    """OpenAI usage: each prompt counted once, completions summed, plus what the loop guard did."""
    counts = totals(dones)
    reasoning = sum(done.usage.get("reasoning_tokens", 0) for _, done in dones)
    loops = []
    for spec, done in dones:
        if done.finish_reason == "loop":
            loops.append(
                {
                    "index": spec.index,
                    "cycle_tokens": done.usage.get("loop_cycle_tokens", 0),
                    "repeats": done.usage.get("loop_repeats", 0),
                }
            )
    prompt, completion = counts["prompt_tokens"], counts["completion_tokens"]
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": counts["cached_tokens"]},
        "completion_tokens_details": {"reasoning_tokens": reasoning, **speculation(dones)},
    }
    if loops:
        out["loop_guard"] = loops
    resumed = sum(done.usage.get("resumed", 0) for _, done in dones)
    if resumed:
        out["resumed"] = resumed  # times a generation was resumed after its worker died
    return out


def speculation(dones: list[tuple[Choice, Done]]) -> dict[str, int]:
    """Speculative decoding in OpenAI's predicted-output fields: drafts the model accepted and
    rejected (absent when no choice decoded speculatively)."""
    if not any(done.usage.get("decode_steps") for _, done in dones):
        return {}
    drafted = sum(done.usage.get("draft_tokens", 0) for _, done in dones)
    accepted = sum(done.usage.get("accepted_draft_tokens", 0) for _, done in dones)
    return {"accepted_prediction_tokens": accepted, "rejected_prediction_tokens": drafted - accepted}


def completion_logprobs(entries: list[dict[str, Any]], offset: int = 0) -> dict[str, Any]:
    """Chat-style logprob entries in the legacy completions layout."""
    text_offset = []
    for e in entries:
        text_offset.append(offset)
        offset += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": text_offset,
    }


class Shape:
    """Builds one response's objects or stream chunks (shared id and creation time); the
    subclasses say where the text and the logprobs go in chat and in text completions."""

    prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(self, rid: str, model: str) -> None:
        self.id = f"{self.prefix}-{rid}"
        self.model = model
        self.created = int(time.time())

    def _base(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "hearth",
        }

    def _message(self, text: str, calls: list[dict[str, Any]], reasoning: str = "") -> dict[str, Any]:
        raise NotImplementedError

    def _delta(self, text: str | None, first: bool, calls: list[dict[str, Any]], reasoning: str = "") -> dict[str, Any]:
        raise NotImplementedError

    def _logprobs(self, entries: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def choice(
        self,
        index: int,
        text: str,
        finish: str,
        logprobs: list[Any] | None,
        calls: list[dict[str, Any]] | None = None,
        reasoning: str = "",
        note: str | None = None,
    ) -> dict[str, Any]:
        lp = self._logprobs(logprobs) if logprobs is not None else None
        message = self._message(text, calls or [], reasoning)
        out = {"index": index, **message, "logprobs": lp, "finish_reason": finish}
        if note:  # Hearth's extension: how the output ended (a tool call cut off by max_tokens)
            out["note"] = note
        return out

    def chunk(
        self,
        index: int,
        text: str | None,
        finish: str | None = None,
        logprobs: list[Any] | None = None,
        first: bool = False,
        calls: list[dict[str, Any]] | None = None,
        reasoning: str = "",
        note: str | None = None,
    ) -> dict[str, Any]:
        body = self._base(self.chunk_object)
        lp = self._logprobs(logprobs) if logprobs is not None else None
        delta = self._delta(text, first, calls or [], reasoning)
        body["choices"] = [{"index": index, **delta, "logprobs": lp, "finish_reason": finish}]
        if note:
            body["choices"][0]["note"] = note
        return body

    def delta_chunks(self, index: int, ev: Delta, logprobs: bool) -> list[dict[str, Any]]:
        """One worker delta as stream chunks, in its order: the reasoning, the text (with the
        logprobs, which ride on the first chunk), then each tool call whole."""
        lp = ev.logprobs if logprobs else None
        out = []
        if ev.reasoning:
            out.append(self.chunk(index, None, logprobs=lp, reasoning=ev.reasoning))
            lp = None
        if ev.text or lp or not (ev.tool_calls or ev.reasoning):
            out.append(self.chunk(index, ev.text, logprobs=lp))
        if ev.tool_calls:
            out.append(self.chunk(index, None, calls=ev.tool_calls))
        return out

    def response(self, choices: list[dict[str, Any]], use: dict[str, Any]) -> dict[str, Any]:
        body = self._base(self.object)
        body["choices"] = choices
        body["usage"] = use
        return body

    def usage_chunk(self, use: dict[str, Any]) -> dict[str, Any]:
        body = self._base(self.chunk_object)
        body["choices"] = []
        body["usage"] = use
        return body


class ChatShape(Shape):
    """Chat completions; a reasoning model's reasoning goes to ``message.reasoning_content`` and
    streamed ``delta.reasoning_content`` (DeepSeek's and vLLM's field), never into ``content``."""

    def _message(self, text: str, calls: list[dict[str, Any]], reasoning: str = "") -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["content"] = text if text.strip() else None  # OpenAI: null content beside tool calls
            message["tool_calls"] = openai_tool_calls(calls)
        if reasoning:
            message["reasoning_content"] = reasoning
        return {"message": message}

    def _delta(self, text: str | None, first: bool, calls: list[dict[str, Any]], reasoning: str = "") -> dict[str, Any]:
        if first:
            return {"delta": {"role": "assistant", "content": ""}}
        if calls:
            return {"delta": {"tool_calls": openai_tool_calls(calls, streaming=True)}}
        if reasoning:
            return {"delta": {"reasoning_content": reasoning}}
        return {"delta": {"content": text} if text is not None else {}}

    def _logprobs(self, entries: list[Any]) -> dict[str, Any]:
        return {"content": entries}


class CompletionShape(Shape):
    prefix = "cmpl"
    object = chunk_object = "text_completion"

    def _message(self, text: str, calls: list[dict[str, Any]], reasoning: str = "") -> dict[str, Any]:
        return {"text": text}  # a prompt's output is never split: reasoning stays empty

    def _delta(self, text: str | None, first: bool, calls: list[dict[str, Any]], reasoning: str = "") -> dict[str, Any]:
        return {"text": text or ""}

    def _logprobs(self, entries: list[Any]) -> dict[str, Any]:
        return completion_logprobs(entries)
