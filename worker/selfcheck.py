"""The load-time self-check: every documented request parameter, once, through the real path.

Each parameter goes into one real one-token generation (EngineCore -> mlx-lm's BatchGenerator,
samplers and logits processors) on the loaded model. An mlx-lm upgrade that changes a signature
or a behaviour Hearth relies on then fails at load, naming the parameter, and the worker never
becomes ready; a request never meets it. It also warms up (compiles) the sampling paths.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.protocol import Done, Error, Generate
from worker.core import EngineCore
from worker.grammar import NoGrammarTokenizer, grammar_tokenizer
from worker.prompt_cache import PromptCache

log = logging.getLogger("hearth.worker")

# (parameter, value): one generation each, on top of temperature 0.7 and max_tokens 1.
CHECKS: tuple[tuple[str, Any], ...] = (
    ("temperature", 0.0),
    ("top_p", 0.9),
    ("top_k", 5),
    ("top_k", 10**9),  # past the vocabulary: must filter nothing, not fail
    ("min_p", 0.05),
    ("seed", 1234),
    ("seed", -1),
    ("presence_penalty", 0.5),
    ("frequency_penalty", 0.5),
    ("repetition_penalty", 1.1),
    ("repetition_context_size", 16),
    ("logit_bias", {"0": 5.0}),
    ("stop", ["\n\n"]),
    ("logprobs", 3),
    ("loop_guard", True),
    ("response_format", {"type": "json_object"}),  # also builds llguidance's tokenizer adapter
)
MAX_STEPS = 64


def grammar_available(loaded: Any) -> bool:
    """Builds llguidance's tokenizer adapter (once per model); False when it can't be built."""
    try:
        grammar_tokenizer(loaded)
    except NoGrammarTokenizer:
        return False
    return True


class SelfCheckError(RuntimeError):
    """A documented parameter failed on this mlx-lm: the worker must not become ready."""


def self_check(core: EngineCore) -> None:
    PromptCache.check_internals()  # warm restarts read two mlx-lm internals: fail here, not at drain
    saved, core.prompt_cache = core.prompt_cache, None  # the checks' caches are of no use later
    try:
        _run_checks(core)
    finally:
        core.prompt_cache = saved


def _run_checks(core: EngineCore) -> None:
    tokens = list(core.m.tokenizer.encode("Hello"))[:8] or [0]
    for name, value in CHECKS:
        if name == "response_format" and not grammar_available(core.m):
            log.warning("%s", core.m.grammar_tokenizer)
            continue
        params = {"temperature": 0.7, "max_tokens": 1, name: value}
        events = core.add(
            Generate(id=f"self-check-{name}", model=core.cfg.name, input={"tokens": tokens}, params=params)
        )
        for _ in range(MAX_STEPS):
            if not core.has_work:
                break
            events += core.step()
        end = next((e for e in reversed(events) if isinstance(e, (Done, Error))), None)
        if not isinstance(end, Done) or core.broken:
            why = end.message if isinstance(end, Error) else core.broken or "no result"
            raise SelfCheckError(f"request parameter {name}={value!r} failed on this mlx-lm: {why}")
