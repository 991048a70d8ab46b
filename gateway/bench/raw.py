"""``hearth bench --raw``: the in-process reference, mlx-lm with no server in between.

The same plan (so the same prompts, with the chat template applied as Hearth's worker applies
it) runs on mlx-lm directly: ``single`` through ``stream_generate``, ``concurrent`` through
``BatchGenerator`` with one sequence per client (a client's next request is inserted when its
previous one finishes). The gap between these numbers and a server's is what serving costs.

MLX is only ever imported in a child process (``python -m gateway.bench.raw``, OpenBLAS
preloaded on Linux): the parent half below spawns it and reads one JSON line per step, each
with every request's token arrival times, which the same statistics as a server's summarize.
The prefix scenario has no in-process counterpart here (it measures a server's prompt cache).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from typing import Any

import orjson

from gateway.bench.progress import Progress
from gateway.bench.scenarios import Plan
from gateway.bench.stats import RequestResult, summarize


def run_raw(plan: Plan, model_path: str | None, quiet: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """Run ``plan``'s single and concurrent steps in a child process: the model folder it
    loaded, and the steps' summaries."""
    from gateway.spawn import child_env

    env = child_env()
    job = orjson.dumps({"plan": plan.to_dict(), "model_path": model_path, "quiet": quiet})
    done = subprocess.run(
        [sys.executable, "-m", "gateway.bench.raw"], input=job, stdout=subprocess.PIPE, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the --raw child process failed with exit status {done.returncode} (see above)")
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    out = []
    for step in lines[1:]:
        results = [RequestResult(**{**r, "chunks": [tuple(c) for c in r["chunks"]]}) for r in step["results"]]
        out.append(summarize(step["scenario"], step["clients"], results, step["wall"], None))
    return lines[0]["model"], out


# -- the child process: everything below imports MLX ---------------------------------------------


def _single(model: Any, tokenizer: Any, plan: Plan, progress: Progress) -> list[RequestResult]:
    from mlx_lm import stream_generate

    from worker.templating import prompt_tokens

    out: list[RequestResult] = []
    started = time.perf_counter()
    while plan.more(len(out), started, time.perf_counter()):
        tokens = prompt_tokens(tokenizer, {"messages": plan.messages("single", 1, 0, len(out))})
        res = RequestResult(start=time.perf_counter(), prompt_tokens=len(tokens))
        for r in stream_generate(model, tokenizer, tokens, max_tokens=plan.max_tokens):
            if r.finish_reason != "stop":  # the end-of-sequence token is counted, not shown
                res.chunks.append((time.perf_counter(), 1))
            res.completion_tokens = r.generation_tokens
        res.end = time.perf_counter()
        progress.add(res)
        out.append(res)
    return out


def _batch(model: Any, tokenizer: Any, plan: Plan, n: int, progress: Progress) -> list[RequestResult]:
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
        tokens = prompt_tokens(tokenizer, {"messages": plan.messages("concurrent", n, client, sent[client])})
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
                    progress.add(res)
                    out.append(res)
                    if plan.more(sent[client], started, now):
                        send(client)
    finally:
        gen.close()
    return out


def main() -> int:
    """Read the job (plan, model path) on stdin; write the model folder, then one JSON line per
    step, on stdout."""
    from mlx_lm import load

    from shared.config import ModelConfig, default_model_path
    from worker.model import resolve_folder

    job = orjson.loads(sys.stdin.buffer.read())
    plan = Plan.from_dict(job["plan"])
    progress = Progress(quiet=job["quiet"])
    folder = resolve_folder(ModelConfig(name="raw", path=job["model_path"] or default_model_path()))
    progress.note(f"raw: loading {folder}")
    sys.stdout.buffer.write(orjson.dumps({"model": str(folder)}) + b"\n")
    model, tokenizer = load(str(folder))[:2]
    warmup = dataclasses.replace(plan, max_tokens=8, requests_per_client=1, duration=None)
    _single(model, tokenizer, warmup, Progress(quiet=True))
    for scenario, n in plan.steps():
        if scenario in ("prefix", "structured", "edit"):  # a server's prompt cache, grammars, speculation
            continue
        progress.start(f"raw {scenario}" + (f" x{n}" if scenario == "concurrent" else ""), plan.expected(n))
        t0 = time.perf_counter()
        if scenario == "single":
            results = _single(model, tokenizer, plan, progress)
        else:
            results = _batch(model, tokenizer, plan, n, progress)
        wall = max((r.end for r in results), default=t0) - min((r.start for r in results), default=t0)
        progress.finish()
        step = {"scenario": scenario, "clients": n, "wall": wall, "results": [dataclasses.asdict(r) for r in results]}
        sys.stdout.buffer.write(orjson.dumps(step) + b"\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
