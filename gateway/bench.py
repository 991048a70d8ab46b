"""``hearth bench``: load a running Hearth (or any OpenAI-compatible server) and report decode
speed for one stream, aggregate speed with N concurrent streams, time to first token, and
/health latency under that load. Numbers from one run on a shared machine are noisy: compare
ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx
import orjson

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


async def _stream_one(http: httpx.AsyncClient, model: str, max_tokens: int, prompt: str) -> dict[str, float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = 0.0
    chunks = usage_tokens = 0  # servers that send no usage in streams: count content chunks
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = orjson.loads(line[6:])
            if "error" in ev:
                raise RuntimeError(ev["error"]["message"])
            if ev.get("choices") and ev["choices"][0]["delta"].get("content"):
                ttft = ttft or time.perf_counter() - t0
                chunks += 1
            if ev.get("usage"):
                usage_tokens = ev["usage"]["completion_tokens"]
    total = time.perf_counter() - t0
    tokens = usage_tokens or chunks
    return {"ttft": ttft, "total": total, "tokens": tokens, "decode_tps": (tokens - 1) / max(total - ttft, 1e-9)}


async def _health_probe(http: httpx.AsyncClient, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await http.get("/health")
        out.append(time.perf_counter() - t)
        await asyncio.sleep(0.05)


def _long_system_prompt(words: int) -> str:
    topics = ["harbours", "lighthouses", "tides", "storms", "ships", "maps", "stars", "ropes", "lamps", "gulls"]
    return " ".join(f"Rule {i}: always be precise about {topics[i % len(topics)]}." for i in range(words // 7))


async def _ttft(http: httpx.AsyncClient, model: str, system: str, question: str) -> float:
    body = {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.perf_counter()
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                return time.perf_counter() - t0
    return time.perf_counter() - t0


async def prefix_ttft(url: str, model: str, words: int) -> dict[str, float]:
    """Cold vs warm time to first token for a long shared system prompt (an agent's turn 1 vs 2)."""
    system = _long_system_prompt(words) + f" (run {time.time_ns()})"  # never cached before this run
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        cold = await _ttft(http, model, system, "Where is the lighthouse?")
        warm = await _ttft(http, model, system, "And where is the harbour?")
    return {"cold_ttft_s": cold, "warm_ttft_s": warm, "speedup": cold / max(warm, 1e-9)}


async def run(url: str, model: str, clients: list[int], max_tokens: int) -> list[dict[str, Any]]:
    results = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await _stream_one(http, model, 8, PROMPT)  # warm-up
        for n in clients:
            stop, health = asyncio.Event(), list[float]()
            probe = asyncio.create_task(_health_probe(http, stop, health))
            t0 = time.perf_counter()
            runs = await asyncio.gather(*(_stream_one(http, model, max_tokens, f"{PROMPT} (#{i})") for i in range(n)))
            wall = time.perf_counter() - t0
            stop.set()
            await probe
            health.sort()
            results.append(
                {
                    "clients": n,
                    "aggregate_tps": sum(r["tokens"] for r in runs) / wall,
                    "per_stream_decode_tps": statistics.median(r["decode_tps"] for r in runs),
                    "ttft_median_s": statistics.median(r["ttft"] for r in runs),
                    "health_p99_ms": 1000 * health[min(len(health) - 1, int(0.99 * len(health)))] if health else 0.0,
                }
            )
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hearth bench", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--clients", default="1,8", help="comma-separated concurrency levels")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument(
        "--prefix-words", type=int, default=0, help="also measure cold/warm TTFT with a shared prompt this long"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if args.prefix_words:
        print(orjson.dumps(asyncio.run(prefix_ttft(args.url, args.model, args.prefix_words))).decode())
    levels = [int(x) for x in args.clients.split(",") if x]
    results = asyncio.run(run(args.url, args.model, levels, args.max_tokens))
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"{'clients':>7} {'agg tok/s':>10} {'stream tok/s':>12} {'TTFT s':>8} {'/health p99 ms':>15}")
    for r in results:
        print(
            f"{r['clients']:>7} {r['aggregate_tps']:>10.1f} {r['per_stream_decode_tps']:>12.1f}"
            f" {r['ttft_median_s']:>8.3f} {r['health_p99_ms']:>15.1f}"
        )
    return 0
