"""What one API request did, for its access-log line and its metrics: the model it named and
the generations it ran. The request-wrap layer (gateway/wrap.py) creates it before the
endpoint runs and reads it after the last byte; the generation session fills it in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

if TYPE_CHECKING:
    from gateway.session import Choice
    from gateway.streams import RequestStream
    from shared.protocol import Done

SCOPE_KEY = "hearth.record"


@dataclass
class Record:
    model: str | None = None  # the configured model it resolved to ("unknown" for a 404)
    generations: list[tuple[Choice, RequestStream]] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)  # more key=value pairs for the log line

    @classmethod
    def of(cls, request: Request) -> Record:
        """The request's record (a fresh one outside the wrap layer, e.g. in unit tests)."""
        state = request.scope.setdefault("state", {})
        record = state.get(SCOPE_KEY)
        if not isinstance(record, Record):
            record = state[SCOPE_KEY] = cls()
        return record


def totals(dones: list[tuple[Choice, Done]]) -> dict[str, int]:
    """A request's token counts: each prompt once (and its cache hits once), completions summed."""
    prompts: dict[int, int] = {}
    completion = cached = 0
    for choice, done in dones:
        prompts.setdefault(choice.prompt, done.usage.get("prompt_tokens", 0))
        completion += done.usage.get("completion_tokens", 0)
        cached += done.usage.get("cached_tokens", 0) if choice.index == choice.prompt else 0
    return {"prompt_tokens": sum(prompts.values()), "completion_tokens": completion, "cached_tokens": cached}
