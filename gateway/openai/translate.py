"""OpenAI bodies <-> Hearth's wire messages: the request's ``input`` and ``params``, and the
response objects and stream chunks built from ``delta`` and ``done``."""

from __future__ import annotations

import time
from typing import Any

from gateway.openai.schemas import ChatCompletionRequest, SamplingFields
from shared.config import ModelConfig
from shared.protocol import Done

PASSED_PARAMS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "repetition_context_size",
    "logit_bias",
)


def params_for(req: SamplingFields, cfg: ModelConfig) -> dict[str, Any]:
    """The model's default sampling parameters, overridden by what the request sets."""
    params = dict(cfg.defaults)
    for name in PASSED_PARAMS:
        value = getattr(req, name)
        if value is not None:
            params[name] = value
    if isinstance(req, ChatCompletionRequest) and req.logprobs:
        params["logprobs"] = req.top_logprobs or 0
    return params


def chat_input(req: ChatCompletionRequest) -> dict[str, Any]:
    return {"messages": [{"role": m.role, "content": m.text()} for m in req.messages]}


def usage(done: Done) -> dict[str, Any]:
    u = done.usage
    prompt, completion = u.get("prompt_tokens", 0), u.get("completion_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": u.get("cached_tokens", 0)},
    }


class ChatShape:
    """Builds one chat completion's response object or stream chunks (shared id and time)."""

    def __init__(self, rid: str, model: str) -> None:
        self.id = f"chatcmpl-{rid}"
        self.model = model
        self.created = int(time.time())

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "system_fingerprint": "hearth"}

    def response(self, text: str, done: Done, logprobs: list[Any] | None) -> dict[str, Any]:
        body = self._base("chat.completion")
        body["choices"] = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": logprobs} if logprobs is not None else None,
                "finish_reason": done.finish_reason,
            }
        ]
        body["usage"] = usage(done)
        return body

    def chunk(self, delta: dict[str, Any], finish: str | None = None, logprobs: list[Any] | None = None) -> dict[str, Any]:
        body = self._base("chat.completion.chunk")
        body["choices"] = [
            {
                "index": 0,
                "delta": delta,
                "logprobs": {"content": logprobs} if logprobs is not None else None,
                "finish_reason": finish,
            }
        ]
        return body

    def usage_chunk(self, done: Done) -> dict[str, Any]:
        body = self._base("chat.completion.chunk")
        body["choices"] = []
        body["usage"] = usage(done)
        return body
