"""Talking to the server under test: one streamed chat completion, timed chunk by chunk, and a
/health prober. Works with any OpenAI-compatible server (Hearth, ``mlx_lm.server``, vLLM)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from gateway.bench.prompts import Messages
from gateway.bench.stats import RequestResult
from gateway.bench.wire import Pool, WireError


class Target:
    """An OpenAI-compatible base URL and the model name to ask it for."""

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 900) -> None:
        self.url = url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = Pool(self.url, headers, timeout)  # gateway/bench/wire.py: a client lighter than the server
        # /health on connections of its own, so probes never queue behind streaming requests
        self.probe = Pool(self.url, headers, timeout)

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.probe.aclose()

    def body(self, messages: Messages, max_tokens: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            **(extra or {}),
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,  # greedy: the same tokens on every run and every server
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def chat(self, messages: Messages, max_tokens: int, extra: dict[str, Any] | None = None) -> RequestResult:
        """Stream one chat completion (``extra``: more body fields); any failure is recorded in
        the result, never raised."""
        res = RequestResult(start=time.perf_counter())
        body = self.body(messages, max_tokens, extra)
        try:
            r = await self.http.request("POST", "/v1/chat/completions", orjson.dumps(body))
            try:
                if r.status != 200:
                    res.error = f"HTTP {r.status}: {(await r.read()).decode(errors='replace')[:300]}"
                    return res
                async for line in r.lines():
                    if line.startswith(b"data: ") and line != b"data: [DONE]":
                        _take_event(res, orjson.loads(line[6:]), time.perf_counter())
                        if res.error:
                            return res
            finally:
                r.close()
        except (WireError, orjson.JSONDecodeError) as e:
            res.error = f"{type(e).__name__}: {e}"
        finally:
            res.end = time.perf_counter()
        if not res.chunks and not res.error:
            res.error = "the stream ended without any content"
        return res

    async def health(self) -> float:
        """One /health round trip in seconds (raises on a non-200 answer)."""
        t = time.perf_counter()
        r = await self.probe.request("GET", "/health")
        try:
            await r.read()
        finally:
            r.close()
        if r.status != 200:
            raise WireError(f"/health answered HTTP {r.status}")
        return time.perf_counter() - t


def _take_event(res: RequestResult, ev: dict[str, Any], now: float) -> None:
    if "error" in ev:
        err = ev["error"]
        res.error = str(err.get("message", err) if isinstance(err, dict) else err)
        return
    for choice in ev.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            res.chunks.append((now, len(content)))
    usage = ev.get("usage")
    if usage:
        res.completion_tokens = usage.get("completion_tokens")
        res.prompt_tokens = usage.get("prompt_tokens")
        details = usage.get("completion_tokens_details") or {}
        if "accepted_prediction_tokens" in details:
            res.accepted = details["accepted_prediction_tokens"]
            res.drafted = res.accepted + details.get("rejected_prediction_tokens", 0)


async def probe_health(target: Target, stop: asyncio.Event, out: list[float], errors: list[str]) -> None:
    """Time /health every 50 ms until ``stop`` is set: a server whose event loop is busy with
    generation answers late, which is what this measures."""
    while not stop.is_set():
        try:
            out.append(await target.health())
        except WireError as e:
            errors.append(f"/health: {type(e).__name__}: {e}")
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            pass
