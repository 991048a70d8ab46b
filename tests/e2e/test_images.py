"""Images and documents sent to a text-only model, end to end on the tiny model: with the
placeholder policy each block becomes a note in its place (the prompt and the greedy answer are
exactly those of the same request with the note written as text), and the response's
``hearth-warning`` header, the access log line and ``hearth_omitted_media_blocks`` count them;
with ``reject`` a 400 names the part.

Models: "tiny" (no setting: placeholder on /v1/messages, reject on OpenAI), "tiny-open"
(``images = "placeholder"``) and "tiny-strict" (``images = "reject"``, never loaded: the refusal
comes before any worker is asked).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.media import HEADER, note
from tests.servers import Gateway, serving, sse_events

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
DOC = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}, "title": "spec.txt"}


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [
        {"name": "tiny", "path": str(tiny_model), "defaults": {"temperature": 0}},
        {"name": "tiny-open", "path": str(tiny_model), "images": "placeholder", "defaults": {"temperature": 0}},
        {"name": "tiny-strict", "path": str(tiny_model), "images": "reject", "preload": False},
    ]
    with serving(tmp_path_factory.mktemp("images"), models) as g:
        yield g


def conversation(model: str = "tiny") -> dict[str, Any]:
    """An image and a document in a user turn, and a screenshot inside a tool result."""
    use = {"type": "tool_use", "id": "toolu_1", "name": "screenshot", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "shot:"}, IMAGE]}
    return {
        "model": model,
        "max_tokens": 6,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is on these?"}, IMAGE, DOC]},
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [result, {"type": "text", "text": "And now?"}]},
        ],
    }


def as_text(body: dict[str, Any]) -> dict[str, Any]:
    """The same request with each image/document block written as a text block with its note."""
    out = copy.deepcopy(body)

    def swap(blocks: list[dict[str, Any]]) -> None:
        for i, b in enumerate(blocks):
            if b["type"] == "image":
                blocks[i] = {"type": "text", "text": note("image", b["source"]["media_type"])}
            elif b["type"] == "document":
                blocks[i] = {"type": "text", "text": note("document", b["title"])}
            elif b["type"] == "tool_result" and isinstance(b.get("content"), list):
                swap(b["content"])

    for m in out["messages"]:
        if isinstance(m["content"], list):
            swap(m["content"])
    return out


def omitted_total(gw: Gateway, model: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "hearth_omitted_media_blocks_total" and s.labels.get("model") == model:
                return s.value
    return 0.0


def access_line(gw: Gateway, request_id: str) -> dict[str, str]:
    deadline = time.monotonic() + 10
    while True:
        for line in gw.log_path.read_text(errors="replace").splitlines():
            if "hearth.access" in line and request_id in line:
                return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line.split("hearth.access INFO ", 1)[1]))
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)


def test_anthropic_placeholder_round_trip_inside_tool_results_too(gw: Gateway) -> None:
    before = omitted_total(gw, "tiny")
    r = gw.http.post("/v1/messages", json=conversation())
    assert r.status_code == 200, r.text
    assert "3 image/document blocks replaced" in r.headers[HEADER]
    plain = gw.http.post("/v1/messages", json=as_text(conversation()))
    assert plain.status_code == 200 and HEADER not in plain.headers
    msg, ref = r.json(), plain.json()
    assert msg["content"] == ref["content"]  # the very same prompt, so the same greedy answer

    def prompt(m: dict[str, Any]) -> int:
        return int(m["usage"]["input_tokens"] + m["usage"]["cache_read_input_tokens"])

    assert prompt(msg) == prompt(ref)
    counted = gw.http.post("/v1/messages/count_tokens", json=conversation())
    assert counted.json() == {"input_tokens": prompt(ref)} and HEADER in counted.headers
    assert omitted_total(gw, "tiny") == before + 6  # three in the message, three in the count
    line = access_line(gw, msg["id"].removeprefix("msg_"))
    assert line["omitted_media"] == "3" and line["status"] == "200"


def test_anthropic_placeholder_when_streaming(gw: Gateway) -> None:
    r = gw.http.post("/v1/messages", json={**conversation(), "stream": True})
    assert r.status_code == 200 and r.headers[HEADER].startswith("3 ")
    events = sse_events(r)
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"


@pytest.mark.parametrize(
    ("blocks", "param"),
    [
        ([{"type": "text", "text": "look"}, IMAGE], "messages[0].content[1]"),
        ([{"type": "tool_result", "tool_use_id": "t", "content": [DOC]}], "messages[0].content[0].content[0]"),
    ],
)
def test_anthropic_reject_is_a_400_naming_the_block(gw: Gateway, blocks: list[Any], param: str) -> None:
    body = {"model": "tiny-strict", "max_tokens": 4, "messages": [{"role": "user", "content": blocks}]}
    r = gw.http.post("/v1/messages", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"].startswith(param)
    assert "text-only" in err["message"] and 'images = "placeholder"' in err["message"]


PARTS = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]


def test_openai_rejects_images_unless_the_model_takes_placeholders(gw: Gateway) -> None:
    body = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": PARTS}]}
    r = gw.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages[0].content" and "part 1 is image_url" in r.json()["error"]["message"]

    before = omitted_total(gw, "tiny-open")
    r = gw.http.post("/v1/chat/completions", json={**body, "model": "tiny-open"})
    assert r.status_code == 200, r.text
    assert r.headers[HEADER].startswith("1 image/document block replaced")
    text = [{"role": "user", "content": "What is this?" + note("image")}]
    ref = gw.http.post("/v1/chat/completions", json={**body, "model": "tiny-open", "messages": text}).json()
    assert r.json()["usage"]["prompt_tokens"] == ref["usage"]["prompt_tokens"]
    assert r.json()["choices"][0]["message"] == ref["choices"][0]["message"]
    assert omitted_total(gw, "tiny-open") == before + 1
    line = access_line(gw, r.json()["id"].removeprefix("chatcmpl-"))
    assert line["omitted_media"] == "1"
