"""Images and documents sent to a text-only model: refused, or replaced by a note, never dropped.

Each model's ``images`` setting picks the policy: ``"reject"`` (a 400 naming the part) or
``"placeholder"`` (each image or document is replaced, where it stood, by a short note telling
the model that it was left out because the model reads text only). Unset, ``/v1/messages``
uses ``placeholder`` (Claude Code resends an image every turn, so a 400 would break the session
for good) and the OpenAI endpoints ``reject``.

The policy reaches the request schemas as pydantic validation context (``{"images": policy}``),
so a refused part is an ordinary validation error naming its place. With ``placeholder`` the
endpoint records how many blocks it replaced in ``request.scope["state"]["omitted_media"]``
(``record``); ``OmittedMediaMiddleware`` then adds the ``hearth-warning`` response header and
counts them in ``hearth_omitted_media_blocks``, and the access log writes ``omitted_media=N``.
"""

from __future__ import annotations

from typing import Any, Literal

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.asgi import is_api
from gateway.metrics import Metrics
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


def record(request: Request, count: int) -> None:
    """Note in the request's state how many blocks translation replaced (for the header, the
    metric and the access log)."""
    if count:
        state = request.scope.setdefault("state", {})
        state[STATE_KEY] = state.get(STATE_KEY, 0) + count


def warning(count: int) -> str:
    noun = "block" if count == 1 else "blocks"
    return f"{count} image/document {noun} replaced by a text note: this model reads text only"


class OmittedMediaMiddleware:
    """Pure ASGI: a response to a request whose images or documents were replaced carries the
    ``hearth-warning`` header, and the replaced blocks are counted per model."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_api(scope):
            await self.app(scope, receive, send)
            return

        async def send_with_warning(message: Message) -> None:
            if message["type"] == "http.response.start":
                count = scope.get("state", {}).get(STATE_KEY, 0)
                if count:
                    headers = list(message.get("headers", []))
                    headers.append((HEADER.encode(), warning(count).encode()))
                    message = {**message, "headers": headers}
                    if self.metrics is not None:
                        model = scope.get("state", {}).get("model", "")
                        self.metrics.omitted_media.labels(model).inc(count)
            await send(message)

        await self.app(scope, receive, send_with_warning)
