"""The access log: one ``key=value`` line per API request on the ``hearth.access`` logger.

    method=POST path=/v1/chat/completions status=200 model=m worker=m-r0-g1
    request_id=chatcmpl-… prompt_tokens=12 completion_tokens=5 cached_tokens=0 ttft=0.031
    worker_ttft=0.024 admit=0.000 duration=0.094 finish_reason=stop

(all on one line). logfmt, because it greps and sorts with the usual tools and is still
readable; values with spaces or quotes are quoted. Times are seconds. ``ttft`` is from the
request reaching the gateway's queue to the first token of its first choice reaching the
gateway; ``worker_ttft`` is the part of it from the worker taking the request (its template
and prompt-cache lookup included), ``admit`` the part of that before its prefill was put in a
batch (``admission_hold``); tokens are the request's totals (a prompt counts once whatever
``n``). Fields a request never got to (a 400 has no worker, a failure no tokens) are left out. The generation
session records the model and generations in the request's ``Record``; the request-wrap layer
(gateway/wrap.py) writes the line after the last byte.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.record import totals

if TYPE_CHECKING:
    from gateway.session import Choice
    from gateway.streams import RequestStream


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


def request_fields(generations: list[tuple[Choice, RequestStream]]) -> dict[str, Any]:
    """What the generations of one request add to its line."""
    if not generations:
        return {}
    streams = [rs for _, rs in generations]
    first = streams[0]
    dones = [(choice, rs.done) for choice, rs in generations if rs.done is not None]
    use = totals(dones) if dones else {}
    workers = sorted({rs.worker_id for rs in streams if rs.worker_id})
    finishes = [rs.done.finish_reason if rs.done else (rs.error or "none") for rs in streams]
    return {
        "worker": ",".join(workers) or None,
        "request_id": first.id,
        "prompt_tokens": use.get("prompt_tokens"),
        "completion_tokens": use.get("completion_tokens"),
        "cached_tokens": use.get("cached_tokens"),
        "ttft": first.t_first - first.t_submit if first.t_first else None,
        # the worker's share of it (from taking the request), and of that its wait to be admitted
        "worker_ttft": first.done.timings.get("ttft_s") if first.done else None,
        "admit": first.done.timings.get("admit_s") if first.done else None,
        "finish_reason": ",".join(finishes),
        "resumed": sum(rs.progress.resumes for rs in streams) or None,
    }
