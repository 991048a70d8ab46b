"""The first token of a warm request, computed straight away.

A request whose prompt is mostly in the KV prompt cache (a conversation's next turn, another
question under a shared system prompt) has only a few new tokens to prefill. mlx-lm's batch
generator would take three steps to its first token: prefill those tokens (all but the last)
in a prompt batch, move the sequence into the decode batch and run the last prompt token, and
only then return the token that produced. Here the new tokens, the last one included, run in
one forward pass on the request's own cache, the first token is sampled from its logits with
the request's own sampler and logits processors (exactly what the batch would do), and the
sequence joins the batch already holding its whole prompt, with that token as its input. The
time to first token drops by a forward pass over the whole context and the batch's copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx


def takes_direct_path(cached: int, total: int, limit: int) -> bool:
    """A warm prompt (at least one cached token) whose remainder fits one prefill step
    (``limit``, the model's ``prefill_step``: the batch would prefill it in one chunk too;
    longer ones go to the batch in chunks). The engine takes
    it only when its batch is idle: with other sequences decoding, a direct forward pass per
    arriving request would stall them, while the batch prefills arrivals together between
    their steps."""
    return cached > 0 and 0 < total - cached <= limit


def first_token(
    model: Any,
    tokens: Sequence[int],
    cached: int,
    cache: list[Any],
    sampler: Callable[[mx.array], mx.array],
    processors: Sequence[Callable[[mx.array, mx.array], mx.array]],
) -> tuple[int, mx.array]:
    """Prefill ``tokens[cached:]`` into ``cache`` and sample the next token: (token, logprobs
    over the vocabulary), as mlx-lm's ``GenerationBatch`` computes them."""
    logits = model(mx.array(list(tokens[cached:]))[None], cache=cache)[:, -1, :]
    if processors:
        context = mx.array(list(tokens))
        for processor in processors:
            logits = processor(context, logits)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    sampled = sampler(logprobs)
    mx.eval(sampled, logprobs, [c.state for c in cache])
    token: int = sampled.tolist()[0]  # type: ignore[assignment,index]
    return token, logprobs[0]
