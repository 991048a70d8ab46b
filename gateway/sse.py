"""Server-sent events: OpenAI's (``data:`` lines, ``[DONE]``) and Anthropic's (named events)."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: clients ignore it, proxies see traffic


def event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def named(name: str, obj: Any) -> bytes:
    """An Anthropic-style event: ``event: NAME`` then its JSON ``data``."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"
