"""The API side of reasoning and of omitted images (pure): request switches to worker params,
passed-back reasoning, the formatters' output for reasoning deltas, and the image policy."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from gateway import media
from gateway.anthropic.schemas import MessagesRequest
from gateway.anthropic.translate import Blocks, MessageShape, omitted_media, params_for, prompt_input
from gateway.bodies import validate
from gateway.errors import InvalidRequest
from gateway.openai import translate as oa
from gateway.openai.schemas import ChatCompletionRequest
from gateway.session import Choice
from shared.config import Config, ModelConfig, ServerConfig
from shared.protocol import Delta, Done

CFG = ModelConfig(name="m", path="/m")
PLACEHOLDER = {"images": "placeholder"}


def anthropic(**extra: Any) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}], **extra}
    return validate(MessagesRequest, body, PLACEHOLDER)


def chat(**extra: Any) -> ChatCompletionRequest:
    return validate(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})


# -- request switches -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("thinking", "switch", "budget"),
    [
        ({"type": "enabled", "budget_tokens": 64}, True, 64),
        ({"type": "adaptive"}, True, None),
        ({"type": "disabled"}, False, None),
    ],
)
def test_anthropic_thinking_becomes_the_template_switch_and_budget(
    thinking: dict[str, Any], switch: bool, budget: int | None
) -> None:
    req = anthropic(thinking=thinking)
    assert prompt_input(req, CFG)["enable_thinking"] is switch  # input: count_tokens counts it too
    assert params_for(req, CFG).get("thinking_budget") == budget


@pytest.mark.parametrize(
    ("thinking", "word"),
    [
        ({"type": "enabled"}, "budget_tokens"),
        ({"type": "disabled", "budget_tokens": 5}, "budget_tokens"),
        ({"type": "sometimes"}, "thinking.type"),
        ({"type": "enabled", "budget_tokens": "5"}, "budget_tokens"),
    ],
)
def test_bad_thinking_is_a_400_naming_it(thinking: dict[str, Any], word: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        anthropic(thinking=thinking)
    assert word in e.value.message and (e.value.param or "").startswith("thinking")


def test_no_thinking_sets_no_switch() -> None:
    assert "enable_thinking" not in prompt_input(anthropic(), CFG)
    assert "enable_thinking" not in oa.chat_input(chat())


@pytest.mark.parametrize(("effort", "on"), [("none", False), ("minimal", True), ("low", True), ("high", True)])
def test_openai_reasoning_effort(effort: str, on: bool) -> None:
    inp = oa.chat_input(chat(reasoning_effort=effort))
    assert inp["enable_thinking"] is on and inp["reasoning_effort"] == effort


def test_openai_unknown_reasoning_effort_is_refused() -> None:
    with pytest.raises(InvalidRequest) as e:
        chat(reasoning_effort="extreme")
    assert e.value.param == "reasoning_effort"


def test_passed_back_reasoning_reaches_the_template_input() -> None:
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo", "reasoning_content": "Hm."},
        {"role": "user", "content": "again"},
    ]
    assert oa.chat_input(chat(messages=history))["messages"][1] == {
        "role": "assistant",
        "content": "yo",
        "reasoning_content": "Hm.",
    }
    with pytest.raises(InvalidRequest, match="assistant"):
        chat(messages=[{"role": "user", "content": "x", "reasoning_content": "no"}])
    blocks = [
        {"type": "thinking", "thinking": "Hm.", "signature": "s"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "yo"},
    ]
    req = anthropic(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": blocks}])
    assert prompt_input(req, CFG)["messages"][1] == {"role": "assistant", "content": "yo", "reasoning_content": "Hm."}


# -- output ---------------------------------------------------------------------------------


def test_openai_message_and_chunks_carry_reasoning_content_apart() -> None:
    shape = oa.ChatShape("r", "m")
    choice = shape.choice(0, "Paris.", "stop", None, None, "The capital...")
    assert choice["message"] == {"role": "assistant", "content": "Paris.", "reasoning_content": "The capital..."}
    assert "reasoning_content" not in shape.choice(0, "Paris.", "stop", None)["message"]
    chunks = shape.delta_chunks(0, Delta("r", "Par", 5, [{"token": "x"}], None, "so."), logprobs=True)
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["logprobs"]) for c in chunks]
    assert deltas == [({"reasoning_content": "so."}, {"content": [{"token": "x"}]}), ({"content": "Par"}, None)]
    call = {"index": 0, "id": "call_1", "name": "f", "arguments": "{}"}
    chunks = shape.delta_chunks(0, Delta("r", "", 6, None, [call], "hm"), logprobs=False)
    assert [list(c["choices"][0]["delta"]) for c in chunks] == [["reasoning_content"], ["tool_calls"]]


def test_openai_usage_reports_reasoning_tokens() -> None:
    spec = Choice(0, 0, {}, {})
    done = Done("r", "stop", {"prompt_tokens": 5, "completion_tokens": 9, "cached_tokens": 0, "reasoning_tokens": 4})
    assert oa.usage([(spec, done)])["completion_tokens_details"] == {"reasoning_tokens": 4}


def test_anthropic_thinking_block_events_in_order_and_agree_with_the_message() -> None:
    b = Blocks()
    events = b.delta(Delta("r", "", 1, None, None, "Let me "))
    events += b.delta(Delta("r", "", 2, None, None, "think."))
    events += b.delta(Delta("r", "Paris", 4, None, None, ""))
    events += b.finish()
    sig = base64.b64encode(hashlib.sha256(b"Let me think.").digest()).decode()
    seen = [(name, data.get("index"), data.get("delta") or data.get("content_block") or {}) for name, data in events]
    assert seen == [
        ("content_block_start", 0, {"type": "thinking", "thinking": "", "signature": ""}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "Let me "}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "think."}),
        ("content_block_delta", 0, {"type": "signature_delta", "signature": sig}),
        ("content_block_stop", 0, {}),
        ("content_block_start", 1, {"type": "text", "text": ""}),
        ("content_block_delta", 1, {"type": "text_delta", "text": "Paris"}),
        ("content_block_stop", 1, {}),
    ]  # fmt: skip
    assert b.content == [
        {"type": "thinking", "thinking": "Let me think.", "signature": sig},
        {"type": "text", "text": "Paris"},
    ]
    msg = MessageShape("r", "m").message(b.content, Done("r", "stop", {"completion_tokens": 4}))
    assert msg["content"][0]["type"] == "thinking" and msg["usage"]["output_tokens"] == 4


def test_a_tool_call_closes_an_open_thinking_block() -> None:
    b = Blocks()
    call = {"index": 0, "id": "call_1", "name": "f", "arguments": "{}"}
    names = [n for n, _ in b.delta(Delta("r", "", 3, None, [call], "hm"))]
    assert names[:4] == ["content_block_start", "content_block_delta", "content_block_delta", "content_block_stop"]
    assert [c["type"] for c in b.content] == ["thinking", "tool_use"]


# -- images and documents -------------------------------------------------------------------

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
DOC = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}, "title": "spec.txt"}


def test_anthropic_media_blocks_become_notes_in_place_also_in_tool_results() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "look:"}, IMAGE, DOC]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [IMAGE]}]},
    ]
    req = anthropic(messages=messages)
    msgs = prompt_input(req, CFG)["messages"]
    assert msgs[0]["content"] == "look:\n\n" + media.note("image", "image/png") + "\n\n" + media.note(
        "document", "spec.txt"
    )
    assert msgs[2] == {"role": "tool", "tool_call_id": "t1", "content": media.note("image", "image/png")}
    assert omitted_media(req) == 3
    assert "text only" in media.note("image")


def test_anthropic_media_blocks_are_refused_by_name_under_reject() -> None:
    body = {
        "model": "m",
        "max_tokens": 9,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, IMAGE]}],
    }
    with pytest.raises(InvalidRequest) as e:
        validate(MessagesRequest, body, {"images": "reject"})
    assert e.value.param == "messages[0].content[1]" and "image" in e.value.message
    tool = {"type": "tool_result", "tool_use_id": "t", "content": [DOC]}
    body["messages"] = [{"role": "user", "content": [tool]}]
    with pytest.raises(InvalidRequest) as e:
        validate(MessagesRequest, body)
    assert (e.value.param or "").startswith("messages[0].content[0].content") and "document" in e.value.message


def test_openai_image_parts_need_the_placeholder_policy() -> None:
    parts = [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    body = {"model": "m", "messages": [{"role": "user", "content": parts}]}
    with pytest.raises(InvalidRequest) as e:
        validate(ChatCompletionRequest, body, {"images": "reject"})
    assert e.value.param == "messages[0].content" and "part 1 is image_url" in e.value.message
    req = validate(ChatCompletionRequest, body, PLACEHOLDER)
    assert oa.chat_input(req)["messages"][0]["content"] == "what is it?" + media.note("image")
    assert oa.omitted_media(req) == 1
    audio = {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}
    with pytest.raises(InvalidRequest, match="input_audio"):  # audio is not an image: refused either way
        validate(ChatCompletionRequest, audio, PLACEHOLDER)


@pytest.mark.parametrize(
    ("images", "api", "policy"),
    [(None, "anthropic", "placeholder"), (None, "openai", "reject"), ("placeholder", "openai", "placeholder"),
     ("reject", "anthropic", "reject")],
)  # fmt: skip
def test_policy_per_model_and_api(images: str | None, api: str, policy: str) -> None:
    config = Config(ServerConfig(), (ModelConfig(name="m", path="/m", images=images),))
    assert media.policy_for(config, {"model": "m"}, api) == policy
    assert media.policy_for(config, {"model": "unknown"}, api) == media.DEFAULT[api]
