"""Embedding throughput, Hearth vs the same model in-process, side by side in one run.

    python benchmarks/embeddings.py [--rounds 3] [--out benchmarks/results/embeddings.json]

Starts a gateway serving the packaged all-MiniLM-L6-v2 (``kind = "embedding"``) on a free port,
and loads the same weights in this process with Hearth's own encoder (``worker.embedding``).
Then, alternating the two in each round so both see the same machine load, it embeds the same
sentences at batch 1 (one sentence per request / forward pass) and batch 32 (32 per request),
through ``POST /v1/embeddings`` (base64, as the openai SDK asks) and through
``tokenize`` + ``encode`` in-process. Reports sentences/s (median over rounds) and the ratio.
Both sides run with Debian's OpenBLAS preloaded (the worker always does; this script
re-executes itself with it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.blas import with_openblas  # noqa: E402

WORDS = "the model reads every sentence and writes one vector that keeps its meaning for search later".split()


def sentences(n: int) -> list[str]:
    """``n`` different sentences of 8 to 20 words (about 10-24 tokens)."""
    out = []
    for i in range(n):
        k = 8 + (i * 7) % 13
        out.append(" ".join(WORDS[(i + j * 3) % len(WORDS)] for j in range(k)) + f" number {i}.")
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cfg = tmp / "hearth.toml"
    cfg.write_text(f'[server]\nport = {port}\n\n[[models]]\nname = "minilm"\nkind = "embedding"\n')
    log = open(tmp / "gateway.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--log-level", "WARNING", "serve", "--config", str(cfg)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the gateway exited")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError("the gateway did not become ready")


def through_hearth(http: Any, texts: list[str], batch: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(texts), batch):
        r = http.post(
            "/v1/embeddings", json={"model": "minilm", "input": texts[i : i + batch], "encoding_format": "base64"}
        )
        r.raise_for_status()
    return len(texts) / (time.perf_counter() - t)


def in_process(model: Any, texts: list[str], batch: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.encode(model.tokenize(texts[i : i + batch], truncate=False))
    return len(texts) / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n1", type=int, default=64, help="sentences per round at batch 1")
    p.add_argument("--n32", type=int, default=256, help="sentences per round at batch 32")
    p.add_argument("--out", default=None, help="write the results as JSON here too")
    args = p.parse_args()

    import httpx

    from shared.config import default_embedding_path
    from worker.embedding.model import load_embedding_model

    model = load_embedding_model(default_embedding_path())
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_gateway(Path(tmp))
        try:
            wait_ready(url, proc)
            http = httpx.Client(base_url=url, timeout=120)
            for b in (1, 32):  # warm both sides at both shapes
                through_hearth(http, sentences(32), b)
                in_process(model, sentences(32), b)
            results: dict[str, dict[str, list[float]]] = {
                "1": {"hearth": [], "in_process": []},
                "32": {"hearth": [], "in_process": []},
            }
            for r in range(args.rounds):
                for batch, n in ((1, args.n1), (32, args.n32)):
                    texts = sentences(n + r)[r:]
                    results[str(batch)]["in_process"].append(in_process(model, texts, batch))
                    results[str(batch)]["hearth"].append(through_hearth(http, texts, batch))
        finally:
            proc.send_signal(2)
            proc.wait(30)
    summary = {}
    for batch, sides in results.items():
        h, m = statistics.median(sides["hearth"]), statistics.median(sides["in_process"])
        summary[batch] = {
            "hearth_sentences_per_s": round(h, 1),
            "in_process_sentences_per_s": round(m, 1),
            "ratio": round(h / m, 2),
        }
        print(f"batch {batch:>2}: Hearth {h:7.1f} sentences/s, in-process {m:7.1f} sentences/s, ratio {h / m:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rounds": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    env = with_openblas(os.environ)
    if env is not None:
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    sys.exit(main())
