"""Server-sent events in the OpenAI streaming format."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: clients ignore it, proxies see traffic


def event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
