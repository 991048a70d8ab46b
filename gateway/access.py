"""The access log: one ``key=value`` line per API request on the ``hearth.access`` logger.

    method=POST path=/v1/chat/completions status=200 model=m worker=m-r0-g1
    request_id=chatcmpl-… prompt_tokens=12 completion_tokens=5 cached_tokens=0 ttft=0.031
    duration=0.094 finish_reason=stop

(all on one line). logfmt, because it greps and sorts with the usual tools and is still
readable; values with spaces or quotes are quoted. Times are seconds. ``ttft`` is from the
request reaching the gateway's queue to the first token of its first choice; tokens are
OpenAI's ``usage`` of the response (a prompt counts once whatever ``n``). Fields a request
never got to (a 400 has no worker, a failure no tokens) are left out; ``omitted_media`` is
the number of image/document blocks replaced by a note (gateway.media). The endpoint records its
model and generations in ``scope["state"]``; this pure ASGI middleware writes the line after
the last byte, so a stream is logged when it ends, with its real duration.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.asgi import StatusRecorder, is_api
from gateway.openai.translate import usage

if TYPE_CHECKING:
    from gateway.client import RequestStream
    from gateway.openai.translate import ChoiceSpec

log = logging.getLogger("hearth.access")


def logfmt(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        if not text or any(c in text for c in ' "=\\'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def request_fields(generations: list[tuple[ChoiceSpec, RequestStream]]) -> dict[str, Any]:
    """What the generations of one request add to its line."""
    if not generations:
        return {}
    streams = [rs for _, rs in generations]
    first = streams[0]
    dones = [(spec, rs.done) for spec, rs in generations if rs.done is not None]
    use = usage(dones) if dones else {}
    workers = sorted({rs.worker_id for rs in streams if rs.worker_id})
    finishes = [rs.done.finish_reason if rs.done else (rs.error or "none") for rs in streams]
    return {
        "worker": ",".join(workers) or None,
        "request_id": first.id,
        "prompt_tokens": use.get("prompt_tokens"),
        "completion_tokens": use.get("completion_tokens"),
        "cached_tokens": use.get("prompt_tokens_details", {}).get("cached_tokens") if use else None,
        "ttft": first.t_first - first.t_submit if first.t_first else None,
        "finish_reason": ",".join(finishes),
    }


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_api(scope):
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        recorder = StatusRecorder(send)
        try:
            await self.app(scope, receive, recorder)
        finally:
            state = scope.get("state", {})
            fields: dict[str, Any] = {
                "method": scope["method"],
                "path": scope["path"],
                "status": recorder.status or 500,
                "model": state.get("model"),
            }
            fields.update(request_fields(state.get("generations", [])))
            fields["omitted_media"] = state.get("omitted_media")  # images/documents replaced by a note
            fields["duration"] = time.monotonic() - t0
            log.info("%s", logfmt(fields))
