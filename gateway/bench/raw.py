"""``hearth bench --raw``: the in-process reference, mlx-lm with no server in between.

The same plan (so the same prompts, with the chat template applied as Hearth's worker applies
it) runs on mlx-lm directly: ``single`` through ``stream_generate``, ``concurrent`` through
``BatchGenerator`` with one sequence per client (a client's next request is inserted when its
previous one finishes). The gap between these numbers and a server's is what serving costs.

MLX is only ever imported in a child process (``python -m gateway.bench.raw``, OpenBLAS
preloaded on Linux): the parent half below spawns it once, sends it each load step when its turn
comes (``gateway.bench.turns``) and reads back one JSON line, every request's token arrival
times, which the same statistics as a server's summarize.
The prefix scenario has no in-process counterpart here (it measures a server's prompt cache).
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from typing import Any

import orjson

from gateway.bench.progress import Progress
from gateway.bench.scenarios import Plan, Round
from gateway.bench.stats import RequestResult


class RawRunner:
    """The in-process reference as one of the run's targets (``gateway.bench.turns``): a child
    process that loads the model once and then runs each load step it is sent, one JSON line in
    (scenario, clients, round) and one out (every request's token arrival times)."""

    name = "raw"

    def __init__(self, model_path: str | None) -> None:
        self.model_path = model_path
        self.folder = ""
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, plan: Plan, progress: Progress) -> None:
        """Spawn the child and wait until it has loaded the model and run its warm-up."""
        from gateway.spawn import child_env

        progress.note("raw: loading the model in-process")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.bench.raw"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env()
        )
        ready = await asyncio.to_thread(self._ask, {"plan": plan.to_dict(), "model_path": self.model_path})
        self.folder = ready["model"]

    def _ask(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(orjson.dumps(job) + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the child is gone: its exit status is reported below
        line = self.proc.stdout.readline()
        if not line:
            status = self.proc.wait()
            raise RuntimeError(f"the --raw child process failed with exit status {status} (see above)")
        out: dict[str, Any] = orjson.loads(line)
        return out

    async def load(self, plan: Plan, scenario: str, n: int, rnd: int, progress: Progress) -> Round:
        step = await asyncio.to_thread(self._ask, {"scenario": scenario, "clients": n, "round": rnd})
        results = [RequestResult(**{**r, "chunks": [tuple(c) for c in r["chunks"]]}) for r in step["results"]]
        for res in results:
            progress.add(res)
        return Round(results, step["wall"])

    async def server_steps(self, plan: Plan, scenario: str, progress: Progress) -> list[dict[str, Any]]:
        return []  # the prefix cache, grammars and speculation are a server's

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "mlx-lm in-process", "model": self.folder}

    async def aclose(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the child's end of input: it exits
        await asyncio.to_thread(self.proc.wait)


# -- the child process: everything below imports MLX ---------------------------------------------


def _single(model: Any, tokenizer: Any, plan: Plan, rnd: int) -> list[RequestResult]:
    from mlx_lm import stream_generate

    from worker.templating import prompt_tokens

    out: list[RequestResult] = []
    started = time.perf_counter()
    while plan.more(len(out), started, time.perf_counter()):
        tokens = prompt_tokens(tokenizer, {"messages": plan.messages("single", 1, 0, len(out), rnd)})
        res = RequestResult(start=time.perf_counter(), prompt_tokens=len(tokens))
        for r in stream_generate(model, tokenizer, tokens, max_tokens=plan.max_tokens):
            if r.finish_reason != "stop":  # the end-of-sequence token is counted, not shown
                res.chunks.append((time.perf_counter(), 1))
            res.completion_tokens = r.generation_tokens
        res.end = time.perf_counter()
        out.append(res)
    return out


def _batch(model: Any, tokenizer: Any, plan: Plan, n: int, rnd: int) -> list[RequestResult]:
    from mlx_lm.generate import BatchGenerator

    from worker.templating import prompt_tokens

    gen = BatchGenerator(
        model,
        max_tokens=plan.max_tokens,
        stop_tokens=[[t] for t in sorted(tokenizer.eos_token_ids)],
        completion_batch_size=n,  # every client's sequence in one batch, as a server with max_batch >= n
        prefill_batch_size=n,
    )
    sent = [0] * n  # requests each client has sent
    live: dict[int, tuple[int, RequestResult]] = {}  # uid -> (client, its current request)
    out: list[RequestResult] = []
    started = time.perf_counter()

    def send(client: int) -> None:
        tokens = prompt_tokens(tokenizer, {"messages": plan.messages("concurrent", n, client, sent[client], rnd)})
        sent[client] += 1
        (uid,) = gen.insert([tokens])
        live[uid] = (client, RequestResult(start=time.perf_counter(), prompt_tokens=len(tokens), completion_tokens=0))

    for c in range(n):
        if plan.more(0, started, time.perf_counter()):
            send(c)
    try:
        while live:
            _, responses = gen.next()
            now = time.perf_counter()
            for r in responses:
                client, res = live[r.uid]
                res.completion_tokens = (res.completion_tokens or 0) + 1
                if r.finish_reason != "stop":
                    res.chunks.append((now, 1))
                if r.finish_reason is not None:
                    res.end = now
                    del live[r.uid]
                    out.append(res)
                    if plan.more(sent[client], started, now):
                        send(client)
    finally:
        gen.close()
    return out


def main() -> int:
    """Read the job (plan, model path) as the first line on stdin and load the model; answer
    with the model folder, then each step line read after it with that step's results, until
    stdin ends."""
    from mlx_lm import load

    from shared.config import ModelConfig, default_model_path
    from worker.model import resolve_folder

    job = orjson.loads(sys.stdin.buffer.readline())
    plan = Plan.from_dict(job["plan"])
    folder = resolve_folder(ModelConfig(name="raw", path=job["model_path"] or default_model_path()))
    model, tokenizer = load(str(folder))[:2]
    warmup = dataclasses.replace(plan, max_tokens=8, requests_per_client=1, duration=None)
    _single(model, tokenizer, warmup, 0)
    sys.stdout.buffer.write(orjson.dumps({"model": str(folder)}) + b"\n")
    sys.stdout.flush()
    for line in sys.stdin.buffer:
        ask = orjson.loads(line)
        t0 = time.perf_counter()
        if ask["scenario"] == "single":
            results = _single(model, tokenizer, plan, ask["round"])
        else:
            results = _batch(model, tokenizer, plan, ask["clients"], ask["round"])
        step = {"wall": Round.of(results, t0).wall, "results": [dataclasses.asdict(r) for r in results]}
        sys.stdout.buffer.write(orjson.dumps(step) + b"\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
