"""Speculative decoding through the gateway: the same text with and without it on every API,
the per-request opt-out, acceptance in the usage and in /metrics, a bad value refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_observability import samples, value
from tests.servers import Gateway, serving, sse_events

CODE = "def hello(name):\n    return f'Hello, {name}!'\n\nprint(hello('a'))\nprint(hello('b'))\n" * 3
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("speculative")
    models = [
        {"name": "tiny", "path": str(tiny_model)},
        {"name": "tiny-off", "path": str(tiny_model), "speculative": "off"},
    ]
    with serving(tmp, models) as g:
        yield g


def body(model: str = "tiny", **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": CODE}], "temperature": 0, "max_tokens": 48, **kw}


def test_the_same_text_with_and_without_speculation_streamed_and_not(gw: Gateway) -> None:
    before = samples(gw)
    spec = gw.http.post(CHAT, json=body()).json()
    off = gw.http.post(CHAT, json=body("tiny-off")).json()
    opted_out = gw.http.post(CHAT, json=body(speculative=False)).json()
    text = spec["choices"][0]["message"]["content"]
    assert text and text == off["choices"][0]["message"]["content"] == opted_out["choices"][0]["message"]["content"]
    details = spec["usage"]["completion_tokens_details"]
    assert details["accepted_prediction_tokens"] > 0 and details["rejected_prediction_tokens"] >= 0
    assert opted_out["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] == 0
    assert "accepted_prediction_tokens" not in off["usage"]["completion_tokens_details"]
    events = sse_events(gw.http.post(CHAT, json=body(stream=True, stream_options={"include_usage": True})))
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
    assert streamed == text
    after = samples(gw)
    drafted = value(after, "hearth_speculative_draft_tokens_total", model="tiny") - value(
        before, "hearth_speculative_draft_tokens_total", model="tiny"
    )
    accepted = value(after, "hearth_speculative_accepted_tokens_total", model="tiny") - value(
        before, "hearth_speculative_accepted_tokens_total", model="tiny"
    )
    steps = value(after, "hearth_decode_steps_total", model="tiny") - value(
        before, "hearth_decode_steps_total", model="tiny"
    )
    assert drafted >= accepted >= details["accepted_prediction_tokens"] > 0
    assert 0 < steps < 3 * 48  # three speculative generations of 48 tokens, fewer steps than tokens
    assert value(after, "hearth_decode_steps_total", model="tiny-off") == 0


def test_the_opt_out_on_the_anthropic_api(gw: Gateway) -> None:
    msg = {"model": "tiny", "max_tokens": 24, "temperature": 0, "messages": [{"role": "user", "content": CODE}]}
    on = gw.http.post("/v1/messages", json=msg).json()
    off = gw.http.post("/v1/messages", json={**msg, "speculative": False}).json()
    assert on["content"][0]["text"] == off["content"][0]["text"]


@pytest.mark.parametrize("path", [CHAT, "/v1/messages"])
def test_a_speculative_value_that_is_not_a_boolean_is_a_400_naming_it(gw: Gateway, path: str) -> None:
    r = gw.http.post(path, json={**body(max_tokens=4), "speculative": "yes"})
    assert r.status_code == 400
    assert "speculative" in r.text
