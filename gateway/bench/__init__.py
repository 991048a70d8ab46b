"""``hearth bench``: a load generator for OpenAI-compatible servers, like ``vllm bench serve``.

``prompts`` (seeded prompts) → ``scenarios`` (single, concurrent, prefix; closed-loop clients)
→ ``streaming`` (one timed streamed request, /health probes) → ``stats`` (TTFT, inter-token
latency, tok/s) → ``report`` (tables, JSON). ``raw`` runs the same plan on mlx-lm in a child
process as the in-process reference. See docs/benchmarks.md.
"""

from gateway.bench.cli import main

__all__ = ["main"]
