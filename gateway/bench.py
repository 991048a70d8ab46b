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
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = orjson.loads(line[6:])
            if "error" in ev:
                raise RuntimeError(ev["error"]["message"])
            if ev.get("choices") and ev["choices"][0]["delta"].get("content") and not ttft:
                ttft = time.perf_counter() - t0
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
    total = time.perf_counter() - t0
    return {"ttft": ttft, "total": total, "tokens": tokens, "decode_tps": (tokens - 1) / max(total - ttft, 1e-9)}


async def _health_probe(http: httpx.AsyncClient, stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await http.get("/health")
        out.append(time.perf_counter() - t)
        await asyncio.sleep(0.05)


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
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.clients.split(",")]
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
