"""``hearth bench``'s command line: build the plan, run it against each target, report.

Targets, in order: the server at ``--url``, the one at ``--compare``, and the in-process
mlx-lm reference with ``--raw``. With ``--raw`` and no ``--url``, only the reference runs. They
take turns, step by step (``gateway.bench.turns``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from gateway.bench import report, turns
from gateway.bench.progress import Progress
from gateway.bench.scenarios import EXTRA_SCENARIOS, SCENARIOS, Plan
from gateway.bench.turns import HttpRunner

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8080"


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--clients wants comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"--clients wants integers >= 1, got {text!r}")
    return levels


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hearth bench",
        description="Load an OpenAI-compatible server (Hearth, mlx_lm.server, ...) with streaming clients and "
        "report time to first token, inter-token latency, decode and aggregate tok/s, errors and /health latency.",
    )
    t = p.add_argument_group("targets")
    t.add_argument("--url", help=f"base URL of the server under test (default {DEFAULT_URL})")
    t.add_argument("--model", default="smollm2-135m-instruct", help="model name to request")
    t.add_argument("--api-key", default=os.environ.get("HEARTH_BENCH_API_KEY"), help="bearer token, if needed")
    t.add_argument("--name", default="server", help="the server's name in the report")
    t.add_argument("--compare", metavar="URL2", help="also run every scenario against this server, then print ratios")
    t.add_argument("--compare-model", help="model name at URL2 (default: --model; mlx_lm.server: default_model)")
    t.add_argument("--compare-name", default="compare", help="URL2's name in the report")
    t.add_argument("--raw", action="store_true", help="also run mlx-lm in-process (child process) as the reference")
    t.add_argument("--model-path", help="--raw's model: MLX folder or GGUF file (default: Hearth's default model)")
    w = p.add_argument_group("workload")
    w.add_argument(
        "--scenario",
        default="all",
        choices=(*SCENARIOS, *EXTRA_SCENARIOS, "all"),
        help="all: single, concurrent, prefix; structured: constrained decoding's cost (--requests-per-client rounds)",
    )
    w.add_argument("--clients", type=_levels, default=(1, 2, 4, 8), help="concurrency levels (default 1,2,4,8)")
    w.add_argument("--max-tokens", type=_positive, default=128)
    w.add_argument("--requests-per-client", type=_positive, default=1)
    w.add_argument("--duration", type=float, help="seconds per step instead of --requests-per-client")
    w.add_argument(
        "--rounds",
        type=_positive,
        default=1,
        help="timed rounds of each single/concurrent step, the targets taking turns (reversed every other round)",
    )
    w.add_argument(
        "--warm-round", action="store_true", help="one untimed round of each of those steps on every target first"
    )
    w.add_argument("--seed", type=int, default=0, help="prompt seed: same seed, same prompts")
    w.add_argument("--prompt-tokens", type=_positive, default=64, help="user-turn length (approximate)")
    w.add_argument("--prefix-tokens", type=_positive, default=1500, help="shared system prompt length (approximate)")
    w.add_argument("--warm-turns", type=_positive, default=4, help="warm requests after the cold one (prefix)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print a JSON document instead of tables")
    o.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


async def _run(args: argparse.Namespace, plan: Plan, progress: Progress) -> list[dict[str, Any]]:
    runners: list[turns.Runner] = []
    if args.url or not args.raw:
        runners.append(HttpRunner(args.name, args.url or DEFAULT_URL, args.model, args.api_key))
    if args.compare:
        runners.append(HttpRunner(args.compare_name, args.compare, args.compare_model or args.model, args.api_key))
    if args.raw:
        from gateway.bench.raw import RawRunner

        runners.append(RawRunner(args.model_path))
    try:
        for runner in runners:
            await runner.start(plan, progress)
        return await turns.run(runners, plan, progress)
    finally:
        for runner in runners:
            await runner.aclose()


def _loop_run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop where it is installed (as the gateway's uvicorn runs): the
    client's own loop should cost less than the server's (gateway/bench/wire.py)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        parser().error("--duration must be > 0")
    plan = Plan(
        scenarios=SCENARIOS if args.scenario == "all" else (args.scenario,),
        clients=args.clients,
        max_tokens=args.max_tokens,
        requests_per_client=args.requests_per_client,
        duration=args.duration,
        seed=args.seed,
        prompt_tokens=args.prompt_tokens,
        prefix_tokens=args.prefix_tokens,
        warm_turns=args.warm_turns,
        salt=secrets.token_hex(6),
        rounds=args.rounds,
        warm_round=args.warm_round,
    )
    progress = Progress(quiet=args.quiet)
    try:
        targets = _loop_run(_run(args, plan, progress))
    except (RuntimeError, OSError) as e:
        print(f"hearth bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nhearth bench: interrupted, no report", file=sys.stderr)
        return 130
    report.write(report.document(argv, plan.to_dict(), targets), args.json)
    return 0
