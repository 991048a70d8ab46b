"""Images and documents sent to a text-only model: refused, or replaced by a note, never dropped.

Each model's ``images`` setting picks the policy: ``"reject"`` (a 400 naming the part) or
``"placeholder"`` (each image or document is replaced, where it stood, by a short note telling
the model that it was left out because the model reads text only). Unset, ``/v1/messages``
uses ``placeholder`` (Claude Code resends an image every turn, so a 400 would break the session
for good) and the OpenAI endpoints ``reject``.

The policy reaches the request schemas as pydantic validation context (``{"images": policy}``),
so a refused part is an ordinary validation error naming its place. With ``placeholder`` the
translation counts the blocks it replaced and the endpoint hands that number to ``record``:
the response gets the ``hearth-warning`` header, ``hearth_omitted_media_blocks`` counts them and
the access-log line says ``omitted_media=N`` (the request's ``Record.fields``).
"""

from __future__ import annotations

from typing import Any, Literal

from starlette.requests import Request

from gateway.metrics import Metrics
from gateway.record import Record
from shared.config import IMAGE_POLICIES, Config

Policy = Literal["reject", "placeholder"]
DEFAULT: dict[str, Policy] = {"anthropic": "placeholder", "openai": "reject"}
STATE_KEY = "omitted_media"
HEADER = "hearth-warning"
# OpenAI content part types that are an image or a document (audio is refused whatever the policy)
OPENAI_IMAGE_PARTS = {"image_url": "image", "input_image": "image", "image": "image", "file": "document"}


def policy_for(config: Config, data: Any, api: str) -> Policy:
    """The policy of the model a raw request body names (before validation, which needs it)."""
    name = data.get("model") if isinstance(data, dict) else None
    cfg = config.model(name) if isinstance(name, str) else None
    configured = getattr(cfg, "images", None)
    return configured if configured in IMAGE_POLICIES else DEFAULT[api]  # type: ignore[return-value]


def context(config: Config, data: Any, api: str) -> dict[str, Any]:
    """The validation context for a request body: its model's image policy."""
    return {"images": policy_for(config, data, api)}


def allows(info_context: Any) -> bool:
    """Whether validation runs under the placeholder policy (no context: reject)."""
    return isinstance(info_context, dict) and info_context.get("images") == "placeholder"


def note(kind: str, detail: str = "") -> str:
    """The text that stands in for an omitted image or document."""
    what = f"{kind} ({detail})" if detail else kind
    return f"[{what} omitted: this model reads text only, so it was not shown]"


def refusal(kind: str) -> str:
    return (
        f"this model reads text only and can't take an {kind} here; send text, or configure the "
        f'model with images = "placeholder" to have each {kind} replaced by a note'
    )


def record(request: Request, count: int, metrics: Metrics | None) -> dict[str, str]:
    """Translation replaced ``count`` blocks: count them (``hearth_omitted_media_blocks``, under
    the model the session resolved), put ``omitted_media=N`` on the access-log line (the
    request's ``Record``), and return the ``hearth-warning`` header for the response (empty when
    nothing was replaced)."""
    if not count:
        return {}
    rec = Record.of(request)
    rec.fields[STATE_KEY] = count
    if metrics is not None:
        metrics.omitted_media.labels(rec.model or "").inc(count)
    return {HEADER: warning(count)}


def warning(count: int) -> str:
    noun = "block" if count == 1 else "blocks"
    return f"{count} image/document {noun} replaced by a text note: this model reads text only"
