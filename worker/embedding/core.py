"""The embedding worker's core: ``embed`` requests in, ``embeddings`` out, no sockets.

It has the shape of ``worker.core.EngineCore`` as ``worker.proc`` drives it (``has_work``,
``step``, ``cancel``, ``running``/``waiting``), so an embedding worker is the same process shell,
supervised, watched and unloaded like a chat worker. Inputs of every waiting request are
batched: one ``step`` encodes up to ``embed_batch`` sequences (oldest requests first, and at most
``embed_tokens`` padded tokens) in one forward pass; a request is answered when all its inputs are.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.config import ModelConfig
from shared.protocol import (
    ERROR_BAD_REQUEST,
    ERROR_CONTEXT_LENGTH,
    ERROR_GENERATION,
    Embed,
    Embeddings,
    Error,
    Generate,
    Message,
)
from worker.embedding.model import EmbeddingModel


class _Refused(Exception):
    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass
class _Job:
    id: str
    seqs: list[list[int]]
    vectors: list[np.ndarray | None]
    next: int = 0  # the first input not yet handed to a batch
    started: bool = False
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def finished(self) -> bool:
        return all(v is not None for v in self.vectors)


class EmbeddingCore:
    """Batches the inputs of all waiting ``embed`` requests through one ``EmbeddingModel``."""

    prompt_cache = None  # an encoder keeps no KV cache; the heartbeat reports 0

    def __init__(self, model: EmbeddingModel, cfg: ModelConfig) -> None:
        self.m = model
        self.cfg = cfg
        self.batch = cfg.embed_batch
        self.tokens = cfg.embed_tokens
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self.broken: str | None = None

    @property
    def has_work(self) -> bool:
        return bool(self._jobs)

    @property
    def running(self) -> int:
        return sum(1 for j in self._jobs.values() if j.started)

    @property
    def waiting(self) -> int:
        return len(self._jobs) - self.running

    def save_warm(self) -> int:
        return 0  # nothing to carry over to the next worker

    def load_warm(self) -> int:
        return 0

    # -- requests ---------------------------------------------------------------------------

    def add(self, req: Generate) -> list[Message]:
        return [
            Error(req.id, ERROR_BAD_REQUEST, f"'{self.cfg.name}' is an embedding model: it does not generate", "model")
        ]

    def count_tokens(self, inp: dict[str, Any]) -> int:
        prompt = inp.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f"'{self.cfg.name}' is an embedding model: it counts the tokens of a prompt only")
        return len(self.m.tokenize([prompt], truncate=False)[0])

    def embed(self, req: Embed) -> list[Message]:
        """Queue ``req``; an input that can't be encoded is answered at once with ``error``."""
        try:
            seqs = self._sequences(req)
        except _Refused as e:
            return [Error(req.id, e.code, e.message, e.param)]
        if not seqs:
            return [Embeddings(req.id, [], {"prompt_tokens": 0})]
        self._jobs[req.id] = _Job(req.id, seqs, [None] * len(seqs))
        return []

    def _sequences(self, req: Embed) -> list[list[int]]:
        params = req.params
        dims = params.get("dimensions")
        if dims is not None and dims != self.m.dimensions:
            raise _Refused(
                ERROR_BAD_REQUEST,
                f"'{self.cfg.name}' makes {self.m.dimensions}-dimensional vectors and can't shorten them "
                f"(dimensions = {dims})",
                "dimensions",
            )
        truncate = bool(params.get("truncate", False))
        texts = [(i, s) for i, s in enumerate(req.inputs) if isinstance(s, str)]
        seqs: list[list[int]] = [[] for _ in req.inputs]
        for (i, _), ids in zip(texts, self.m.tokenize([s for _, s in texts], truncate)):
            seqs[i] = ids
        limit = self.m.context_length
        for i, item in enumerate(req.inputs):
            if isinstance(item, list):
                bad = next((t for t in item if not 0 <= t < self.m.vocab_size), None)
                if bad is not None:
                    raise _Refused(
                        ERROR_BAD_REQUEST,
                        f"input {i}: token id {bad} is outside the vocabulary (0..{self.m.vocab_size - 1})",
                        "input",
                    )
                seqs[i] = item[:limit] if truncate else list(item)
            if not seqs[i]:
                raise _Refused(ERROR_BAD_REQUEST, f"input {i} is empty", "input")
            if len(seqs[i]) > limit:
                raise _Refused(
                    ERROR_CONTEXT_LENGTH,
                    f"input {i} has {len(seqs[i])} tokens; '{self.cfg.name}' takes at most {limit} tokens per input",
                    "input",
                )
        return seqs

    def cancel(self, rid: str) -> None:
        self._jobs.pop(rid, None)

    def cancel_all(self) -> None:
        self._jobs.clear()

    def fail_all(self, code: str, message: str) -> list[Message]:
        out: list[Message] = [Error(j.id, code, message) for j in self._jobs.values()]
        self._jobs.clear()
        return out

    # -- steps ------------------------------------------------------------------------------

    def _pick(self) -> list[tuple[_Job, int]]:
        """The next waiting inputs, oldest first: at most ``embed_batch`` of them, and at most
        ``embed_tokens`` tokens once padded to the longest (one at least), so a step of long
        inputs stays short enough for the heartbeats that come between steps."""
        picked: list[tuple[_Job, int]] = []
        longest = 0
        for job in self._jobs.values():
            while job.next < len(job.seqs) and len(picked) < self.batch:
                n = max(longest, len(job.seqs[job.next]))
                if picked and n * (len(picked) + 1) > self.tokens:
                    return picked
                picked.append((job, job.next))
                longest = n
                job.next += 1
                job.started = True
            if len(picked) >= self.batch:
                break
        return picked

    def step(self) -> list[Message]:
        """Encode the next batch of waiting inputs; answer the requests that are complete."""
        picked = self._pick()
        try:
            vectors = self.m.encode([job.seqs[i] for job, i in picked])
            for (job, i), vec in zip(picked, vectors):
                job.vectors[i] = vec
        except Exception as e:  # the forward pass itself failed: a worker in a bad state restarts
            self.broken = f"{type(e).__name__}: {e}"
            return self.fail_all(ERROR_GENERATION, f"the embedding forward pass failed: {self.broken}")
        out: list[Message] = []
        for job in [j for j in self._jobs.values() if j.finished]:
            del self._jobs[job.id]
            vectors = np.stack([v for v in job.vectors if v is not None])
            out.append(Embeddings(job.id, vectors.tolist(), {"prompt_tokens": sum(len(s) for s in job.seqs)}))
        return out
