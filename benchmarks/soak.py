"""Mixed traffic against a running Hearth on loopback, sampling memory as it goes (issue 19).

Traffic (weighted, ``KINDS``): chat streams of varied length (10-400 words), long shared
prefixes (one system prompt, many questions), streams the client drops after a few chunks,
non-streamed requests the client gives up on (cancels), bad input (must be 400), tool calls,
Anthropic messages; besides, every ``--unload-every`` seconds the model is unloaded through
``keep_alive = 0`` (the next request reloads it) and every ``--kill-every`` seconds a worker is
SIGKILLed. Each request is accounted for: ok, an expected 4xx, a client-side drop, or an error
by kind (5xx, a stream that ended without its final event, a transport error).

Every ``--sample-every`` seconds (or ``--sample-requests`` requests) one row: the gateway's and
each worker's RSS (``/proc/PID/statm``), the workers' MLX counters and prompt cache bytes as
they report them, open file descriptors, errors so far and tok/s since the last row (from
``/metrics``). Linux only (``/proc``); the URL must be loopback.

    python benchmarks/soak.py --url http://127.0.0.1:18090 --model m --gateway-pid PID --duration 600
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx

WORDS = (
    "the model server keeps weights warm and answers many clients at once while the cache holds "
    "conversations so that each next turn only prefills new messages and memory stays bounded"
).split()
SYSTEM = " ".join(random.Random(7).choice(WORDS) for _ in range(600))  # a long shared prefix
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
KINDS = {"stream": 30, "shared_prefix": 20, "drop": 10, "cancel": 8, "bad_input": 8, "tools": 12, "anthropic": 12}


MAX_WORDS = [400]  # --max-words


def words(rng: random.Random, lo: int = 10, hi: int = 0) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, max(lo, hi or MAX_WORDS[0]))))


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.http = httpx.Client(base_url=args.url, timeout=httpx.Timeout(300, connect=10))
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.requests = 0
        self.lock = threading.Lock()
        self.rows: list[dict[str, Any]] = []
        self.kills = 0
        self.unloads = 0
        self.running = threading.Event()  # cleared while the soak waits for an unload
        self.running.set()

    # -- one request of each kind -------------------------------------------------------------

    def one(self, seed: int) -> None:
        rng = random.Random(seed)
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        try:
            outcome = getattr(self, f"_{kind}")(rng)
        except httpx.TimeoutException:
            outcome = "error:timeout"
        except httpx.TransportError as e:
            outcome = f"error:transport:{type(e).__name__}"
        with self.lock:
            self.requests += 1
            self.outcomes[f"{kind}:{outcome}"] += 1
            if outcome.startswith("error"):
                self.errors[f"{kind}:{outcome}"] += 1

    def _chat(self, messages: list[dict[str, Any]], rng: random.Random, **extra: Any) -> dict[str, Any]:
        return {
            "model": self.args.model,
            "messages": messages,
            "max_tokens": rng.randint(4, self.args.max_tokens),
            "temperature": 0.7,
            "seed": rng.randint(0, 1 << 30),
            **extra,
        }

    def _status(self, r: httpx.Response) -> str:
        """A non-200 answer: ``killed`` for a worker the soak killed (502 worker_died), an error
        for any other 5xx, else the status."""
        if r.status_code == 502 and b"worker_died" in r.content:
            return "killed"
        return f"error:{r.status_code}" if r.status_code >= 500 else f"http:{r.status_code}"

    def _stream_body(self, body: dict[str, Any], drop_after: int | None = None) -> str:
        with self.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            if r.status_code != 200:
                r.read()
                return self._status(r)
            chunks, finished, done = 0, False, False
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    code = event["error"].get("code")
                    return "killed" if code == "worker_died" else f"error:in_band:{code}"
                chunks += 1
                if event["choices"] and event["choices"][0].get("finish_reason"):
                    finished = True
                if drop_after is not None and chunks >= drop_after:
                    return "dropped"  # leaving the with-block closes the connection mid-stream
        return "ok" if finished and done else "error:truncated"

    def _stream(self, rng: random.Random) -> str:
        return self._stream_body(self._chat([{"role": "user", "content": words(rng)}], rng))

    def _shared_prefix(self, rng: random.Random) -> str:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": words(rng, 5, 40)}]
        return self._stream_body(self._chat(msgs, rng))

    def _drop(self, rng: random.Random) -> str:
        body = self._chat([{"role": "user", "content": words(rng)}], rng, max_tokens=self.args.max_tokens * 4)
        return self._stream_body(body, drop_after=rng.randint(1, 3))

    def _cancel(self, rng: random.Random) -> str:
        body = self._chat([{"role": "user", "content": words(rng)}], rng, max_tokens=self.args.max_tokens * 4)
        try:
            r = self.http.post("/v1/chat/completions", json=body, timeout=rng.uniform(0.2, 1.5))
        except httpx.ReadTimeout:
            return "cancelled"  # the client gave up: the gateway cancels the generation
        return "ok" if r.status_code == 200 else self._status(r)

    def _bad_input(self, rng: random.Random) -> str:
        bad = rng.choice(
            [
                b"{not json",
                json.dumps({"model": self.args.model, "messages": "hi"}).encode(),
                json.dumps({"model": self.args.model, "messages": [], "max_tokens": -1}).encode(),
                json.dumps(
                    {"model": self.args.model, "messages": [{"role": "user", "content": "x"}], "top_p": 7}
                ).encode(),
                json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}).encode(),
            ]
        )
        r = self.http.post("/v1/chat/completions", content=bad, headers={"content-type": "application/json"})
        return "rejected" if 400 <= r.status_code < 500 else f"error:unexpected_{r.status_code}"

    def _tools(self, rng: random.Random) -> str:
        body = self._chat([{"role": "user", "content": "weather in " + words(rng, 1, 5)}], rng, tools=TOOLS)
        r = self.http.post("/v1/chat/completions", json=body)
        if r.status_code != 200:
            return self._status(r)
        return "ok" if r.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls") else "error:finish"

    def _anthropic(self, rng: random.Random) -> str:
        body = {
            "model": self.args.model,
            "max_tokens": rng.randint(4, self.args.max_tokens),
            "messages": [{"role": "user", "content": words(rng)}],
            "stream": True,
        }
        with self.http.stream("POST", "/v1/messages", json=body) as r:
            if r.status_code != 200:
                r.read()
                return self._status(r)
            text = r.read().decode()
        if "event: error" in text:
            return "killed" if "worker_died" in text or "died" in text else "error:in_band"
        return "ok" if "event: message_stop" in text else "error:truncated"

    # -- disturbances ---------------------------------------------------------------------------

    def workers(self) -> list[dict[str, Any]]:
        models = self.http.get("/admin/models").json()["models"]
        return [w for m in models if m["name"] == self.args.model for w in m["workers"]]

    def kill_a_worker(self) -> None:
        ws = [w for w in self.workers() if w["pid"] and w["state"] == "ready"]
        if ws:
            os.kill(ws[0]["pid"], signal.SIGKILL)
            self.kills += 1

    def unload_by_keep_alive(self) -> None:
        """Pause the clients, send a request with keep_alive 0 (the model unloads as soon as it
        is idle), wait for the unload; the traffic that follows reloads it."""
        self.running.clear()
        try:
            body = {"model": self.args.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            r = self.http.post("/v1/chat/completions", json={**body, "keep_alive": 0})
            with self.lock:
                self.outcomes[f"keep_alive_0:{'ok' if r.status_code == 200 else r.status_code}"] += 1
                if r.status_code >= 500:
                    self.errors[f"keep_alive_0:error:{r.status_code}"] += 1
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                models = self.http.get("/admin/models").json()["models"]
                if next(m for m in models if m["name"] == self.args.model)["state"] == "unloaded":
                    self.unloads += 1
                    return
                time.sleep(0.2)
        finally:
            self.running.set()

    # -- sampling ---------------------------------------------------------------------------------

    def completion_tokens(self) -> float:
        text = self.http.get("/metrics").text
        found = re.findall(
            rf'^hearth_completion_tokens_total{{model="{re.escape(self.args.model)}"}} (\S+)$', text, re.M
        )
        return float(found[0]) if found else 0.0

    def sample(self, t0: float, last: dict[str, float]) -> dict[str, Any]:
        ready = self.http.get("/ready").json()["models"].get(self.args.model, {}).get("workers", [])
        workers = {w["id"]: w for w in ready}
        admin = {w["id"]: w for w in self.workers()}
        now, tokens = time.monotonic(), self.completion_tokens()
        pids = [w["pid"] for w in admin.values() if w.get("pid")]
        row = {
            "t": round(now - t0),
            "requests": self.requests,
            "gateway_rss": rss(self.args.gateway_pid),
            "gateway_fds": fds(self.args.gateway_pid),
            "worker_rss": sum(rss(p) for p in pids),
            "worker_fds": sum(fds(p) for p in pids),
            "reported": sum(w.get("memory_bytes") or 0 for w in admin.values()),
            "mlx_active": sum(w.get("mlx_active_bytes") or 0 for w in admin.values()),
            "mlx_cache": sum(w.get("mlx_cache_bytes") or 0 for w in admin.values()),
            "prompt_cache": sum(w.get("prompt_cache_bytes") or 0 for w in workers.values()),
            "workers": len(pids),
            "errors": sum(self.errors.values()),
            "tok_s": round((tokens - last["tokens"]) / max(now - last["t"], 1e-9), 2),
            "kills": self.kills,
            "unloads": self.unloads,
        }
        last.update(t=now, tokens=tokens)
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    def run(self) -> None:
        a = self.args
        t0 = time.monotonic()
        last = {"t": t0, "tokens": self.completion_tokens()}
        self.sample(t0, last)
        stop = threading.Event()
        seeds = iter(range(a.seed, a.seed + 10**9))
        seed_lock = threading.Lock()

        def client() -> None:
            while not stop.is_set():
                self.running.wait()
                with seed_lock:
                    seed = next(seeds)
                    if a.requests and seed - a.seed >= a.requests:
                        return
                self.one(seed)

        with ThreadPoolExecutor(a.concurrency) as pool:
            futures = [pool.submit(client) for _ in range(a.concurrency)]
            next_sample, next_kill, next_unload = t0 + a.sample_every, t0 + a.kill_every, t0 + a.unload_every
            sampled_at = 0
            while not all(f.done() for f in futures):
                time.sleep(0.5)
                now = time.monotonic()
                if a.duration and now - t0 >= a.duration:
                    break
                if a.kill_every and now >= next_kill:
                    self.kill_a_worker()
                    next_kill = now + a.kill_every
                if a.unload_every and now >= next_unload:
                    self.unload_by_keep_alive()
                    next_unload = now + a.unload_every
                due = a.sample_requests and self.requests - sampled_at >= a.sample_requests
                if (a.sample_every and now >= next_sample) or due:
                    sampled_at = self.requests
                    self.sample(t0, last)
                    next_sample = now + a.sample_every
            stop.set()
            for f in futures:
                f.result()
        self.sample(t0, last)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--gateway-pid", type=int, required=True)
    p.add_argument("--duration", type=float, default=0, help="seconds (0: until --requests are done)")
    p.add_argument("--requests", type=int, default=0, help="stop after this many requests (0: no limit)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--sample-every", type=float, default=60)
    p.add_argument("--sample-requests", type=int, default=0, help="also sample every this many requests")
    p.add_argument("--kill-every", type=float, default=0, help="SIGKILL a worker this often (0: never)")
    p.add_argument("--unload-every", type=float, default=0, help="unload via keep_alive 0 this often (0: never)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-words", type=int, default=400, help="longest prompt in words (shortest: 10)")
    p.add_argument("--out", help="write the rows and outcomes as JSON here")
    args = p.parse_args()
    host = urlsplit(args.url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        p.error("the soak runs against loopback only")
    MAX_WORDS[0] = args.max_words
    soak = Soak(args)
    soak.run()
    summary = {"rows": soak.rows, "outcomes": dict(soak.outcomes), "errors": dict(soak.errors)}
    print(json.dumps({"outcomes": summary["outcomes"], "errors": summary["errors"]}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
