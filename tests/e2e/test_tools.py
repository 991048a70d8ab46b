"""Tool calling on a real (tiny, random-weight) model whose chat template renders tools.

The tool variant of the tiny model has a Qwen2.5/Hermes-style template and ``<tool_call>`` /
``</tool_call>`` as special tokens, so mlx-lm picks its json_tools parser. The checks: the tool
definitions and the tool messages really reach the prompt (the worker's prompt token count
equals the template rendered here with the model's own tokenizer), and a forced tool_choice
yields a call of that function, or, when the random model writes malformed arguments, text:
never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import TOOLS, Gateway, serving, sse_events
from tests.tinymodel import EMPTY_ARGS, build_tiny_model

CHAT = "/v1/chat/completions"
QUESTION = [{"role": "user", "content": "What is the weather in Köln?"}]
HISTORY = [
    *QUESTION,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Köln"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 °C"},
]


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-tools"), tools=True)


@pytest.fixture(scope="module")
def gw(tool_model: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gw-tools")
    models = [
        {"name": "tools", "path": str(tool_model), "max_batch": 4},
        {"name": "tiny", "path": str(tiny_model), "tools": "off"},  # no generic format: the refusal
    ]
    with serving(tmp, models) as g:
        yield g


@pytest.fixture(scope="module")
def hf_tokenizer(tool_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tool_model))


def body(messages: list[dict[str, Any]] = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": "tools", "messages": messages, "max_tokens": 1, "temperature": 0, **extra}


def rendered_tokens(tok: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """The prompt's length as the template renders it here, arguments as objects (as HF wants)."""
    msgs = json.loads(json.dumps(messages))
    for m in msgs:
        if m.get("content") is None:
            m["content"] = ""
        for c in m.get("tool_calls") or []:
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
    return len(tok.apply_chat_template(msgs, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False))


def test_tool_definitions_reach_the_prompt(gw: Gateway, hf_tokenizer: Any) -> None:
    plain = gw.http.post(CHAT, json=body())
    offered = gw.http.post(CHAT, json=body(tools=TOOLS))
    assert plain.status_code == offered.status_code == 200, offered.text
    without, with_tools = plain.json()["usage"]["prompt_tokens"], offered.json()["usage"]["prompt_tokens"]
    assert without == rendered_tokens(hf_tokenizer, QUESTION, None)
    assert with_tools == rendered_tokens(hf_tokenizer, QUESTION, TOOLS)
    assert with_tools > without + 50  # the schemas are in there
    none = gw.http.post(CHAT, json=body(tools=TOOLS, tool_choice="none"))
    assert none.json()["usage"]["prompt_tokens"] == without  # "none": not offered at all


def test_tool_calls_and_results_render_in_the_history(gw: Gateway, hf_tokenizer: Any) -> None:
    r = gw.http.post(CHAT, json=body(HISTORY, tools=TOOLS))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == rendered_tokens(hf_tokenizer, HISTORY, TOOLS)
    call = {"function": {"name": "get_weather", "arguments": {"city": "Köln"}}}
    history = [*QUESTION, {**HISTORY[1], "content": "", "tool_calls": [call]}, HISTORY[2]]
    text = hf_tokenizer.apply_chat_template(history, tools=TOOLS, tokenize=False)
    assert "<tool_response>\nsunny, 21 °C\n</tool_response>" in text and '"city": "Köln"' in text
    without_tools = gw.http.post(CHAT, json=body(HISTORY))  # a history alone needs no tools
    assert without_tools.status_code == 200, without_tools.text


def test_named_tool_choice_makes_a_call_of_that_function(gw: Gateway, hf_tokenizer: Any) -> None:
    """The prompt ends with the call's opening; one forced token closes the arguments, so the
    random model writes a complete, well-formed call."""
    (empty_args,) = hf_tokenizer.encode(EMPTY_ARGS, add_special_tokens=False)
    choice = {"type": "function", "function": {"name": "get_time"}}
    r = gw.http.post(CHAT, json=body(tools=TOOLS, tool_choice=choice, logit_bias={str(empty_args): 100}))
    assert r.status_code == 200, r.text
    (out,) = r.json()["choices"]
    assert out["message"]["content"] is None
    (call,) = out["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_time", "arguments": "{}"}
    assert out["finish_reason"] == "length"  # max_tokens 1 ended it, right after the call was complete
    assert r.json()["usage"]["prompt_tokens"] > rendered_tokens(hf_tokenizer, QUESTION, TOOLS)  # + the opening


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_choice_on_free_output_is_a_call_or_text_never_an_error(
    gw: Gateway, choice: Any, stream: bool
) -> None:
    data = body(tools=TOOLS, tool_choice=choice, max_tokens=12, stream=stream, parallel_tool_calls=False)
    if not stream:
        r = gw.http.post(CHAT, json=data)
        assert r.status_code == 200, r.text
        message = r.json()["choices"][0]["message"]
        calls, content = message.get("tool_calls") or [], message["content"] or ""
        finish = r.json()["choices"][0]["finish_reason"]
    else:
        with gw.http.stream("POST", CHAT, json=data) as s:
            assert s.status_code == 200
            events = sse_events(s)
        assert events[-1] == "[DONE]"
        deltas = [e["choices"][0]["delta"] for e in events[:-1]]
        calls = [c for d in deltas for c in d.get("tool_calls", [])]
        content = "".join(d.get("content") or "" for d in deltas)
        finish = events[-2]["choices"][0]["finish_reason"]
    if calls:
        assert len(calls) == 1  # parallel_tool_calls false
        if isinstance(choice, dict):
            assert calls[0]["function"]["name"] == "get_weather"
        assert "city" in json.loads(calls[0]["function"]["arguments"])  # held to the schema by the grammar
        assert finish in ("tool_calls", "length")
    else:  # the grammar keeps every call well-formed: no call means max_tokens cut it off, and it is left out
        assert content == ""
        assert finish == "length"


def test_auto_on_free_output_answers(gw: Gateway) -> None:
    r = gw.http.post(CHAT, json=body(tools=TOOLS, max_tokens=16))
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] in ("stop", "length", "tool_calls")
    assert isinstance(choice["message"]["content"], str) or choice["message"]["tool_calls"]


def test_a_model_whose_template_ignores_tools_refuses_them(gw: Gateway) -> None:
    """The plain tiny model's ChatML template has no tools block and its ``tools`` setting is
    "off": offering tools is a 400 naming ``tools``, rather than tools silently dropped;
    tool_choice "none" and a history still work."""
    tiny_gateway = gw
    r = tiny_gateway.http.post(CHAT, json={**body(tools=TOOLS), "model": "tiny"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "tools" and "does not support tools" in err["message"]
    r = tiny_gateway.http.post(CHAT, json={**body(tools=TOOLS, tool_choice="none"), "model": "tiny"})
    assert r.status_code == 200, r.text
    r = tiny_gateway.http.post(CHAT, json={**body(HISTORY), "model": "tiny"})
    assert r.status_code == 200, r.text
