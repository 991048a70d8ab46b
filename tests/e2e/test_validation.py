"""Bad requests end to end: each is a clear 4xx with an OpenAI error body naming the problem,
and the gateway keeps serving normally right after it.

One gateway of this module's own, with a 64 KiB body limit so the 413 case is cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from tests.servers import Gateway, chat, serving

BODY_LIMIT = 65536
CONTEXT = 16384  # the tiny model's context (tests/tinymodel.py)
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def gw(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("validation")
    with serving(
        tmp, [{"name": "tiny", "path": str(tiny_model), "max_batch": 4}], server={"body_limit": BODY_LIMIT}
    ) as g:
        yield g


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model / "tokenizer.json"))


def body(**params: Any) -> dict[str, Any]:
    """A small valid chat body, with ``params`` set (a value of ``...`` removes the field)."""
    b = chat("tiny", "Hi", max_tokens=2)
    b.update(params)
    return {k: v for k, v in b.items() if v is not ...}


def cbody(**params: Any) -> dict[str, Any]:
    b = {"model": "tiny", "prompt": "Hello", "max_tokens": 2, "temperature": 0, **params}
    return {k: v for k, v in b.items() if v is not ...}


def raw(data: bytes, ctype: str = "application/json") -> dict[str, Any]:
    return {"content": data, "headers": {"content-type": ctype}}


def _chunked_over_limit() -> Iterator[bytes]:
    for _ in range(BODY_LIMIT // 1000 + 2):
        yield b" " * 1000  # no Content-Length: the limit must hold while streaming the body


@dataclass(frozen=True)
class Case:
    id: str
    request: dict[str, Any] | Callable[[], dict[str, Any]]  # httpx keyword arguments
    status: int
    param: str | None = None
    code: str | None = None
    words: tuple[str, ...] = ()  # each must appear in the message (case-insensitive)
    method: str = "POST"
    path: str = CHAT
    type: str = "invalid_request_error"
    marks: tuple[Any, ...] = field(default=())


def J(b: Any) -> dict[str, Any]:
    return {"json": b}


CASES = [
    # the body itself
    Case("invalid-json", raw(b'{"model": "tiny", '), 400, code="invalid_json", words=("json",)),
    Case("empty-body", raw(b""), 400, code="invalid_json", words=("empty",)),
    Case("body-list", J([body()]), 400, code="invalid_body", words=("object", "list")),
    Case("body-string", J("hello"), 400, code="invalid_body", words=("object", "str")),
    Case("body-number", J(42), 400, code="invalid_body", words=("object", "int")),
    Case("body-null", raw(b"null"), 400, code="invalid_body", words=("object",)),
    Case(
        "over-body-limit",
        J(body(messages=[{"role": "user", "content": "x" * (BODY_LIMIT + 10)}])),
        413,
        code="request_too_large",
        words=(str(BODY_LIMIT),),
    ),
    Case(
        "over-body-limit-chunked",
        lambda: {"content": _chunked_over_limit(), "headers": {"content-type": "application/json"}},
        413,
        code="request_too_large",
        words=(str(BODY_LIMIT),),
    ),
    Case(
        "content-type-text-plain",
        raw(b"{}", "text/plain"),
        415,
        code="unsupported_media_type",
        words=("text/plain", "application/json"),
    ),
    Case(
        "content-type-form",
        raw(b"a=1", "application/x-www-form-urlencoded"),
        415,
        code="unsupported_media_type",
        words=("application/json",),
    ),
    # routing
    Case("get-on-chat", {}, 405, method="GET", code="method_not_allowed", words=("GET",)),
    Case(
        "put-on-completions", J(cbody()), 405, method="PUT", path=COMPLETIONS, code="method_not_allowed", words=("PUT",)
    ),
    Case("unknown-path", J(body()), 404, path="/v1/nope", code="not_found", words=("/v1/nope",)),
    # model
    Case(
        "unknown-model",
        J(body(model="no-such-model")),
        404,
        param="model",
        code="model_not_found",
        words=("no-such-model",),
    ),
    Case(
        "model-missing", J(body(model=...)), 400, param="model", code="missing_parameter", words=("model", "required")
    ),
    Case("model-int", J(body(model=7)), 400, param="model", code="invalid_parameter", words=("string",)),
    # messages
    Case(
        "messages-missing",
        J(body(messages=...)),
        400,
        param="messages",
        code="missing_parameter",
        words=("messages", "required"),
    ),
    Case(
        "messages-empty", J(body(messages=[])), 400, param="messages", code="invalid_parameter", words=("at least 1",)
    ),
    Case("messages-object", J(body(messages={"role": "user", "content": "x"})), 400, param="messages", words=("list",)),
    Case(
        "role-unknown",
        J(body(messages=[{"role": "wizard", "content": "x"}])),
        400,
        param="messages[0].role",
        code="invalid_parameter",
        words=("role", "user"),
    ),
    Case(
        "role-missing",
        J(body(messages=[{"content": "x"}])),
        400,
        param="messages[0].role",
        code="missing_parameter",
        words=("role", "required"),
    ),
    Case(
        "content-int",
        J(body(messages=[{"role": "user", "content": 5}])),
        400,
        param="messages[0].content",
        words=("content",),
    ),
    Case(
        "content-image-part",
        J(
            body(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                        ],
                    }
                ]
            )
        ),
        400,
        param="messages[0].content",
        words=("image_url", "text-only"),
    ),
    Case(
        "content-part-no-text",
        J(body(messages=[{"role": "user", "content": [{"type": "text"}]}])),
        400,
        param="messages[0].content",
        words=("text",),
    ),
    Case(
        "second-message-bad",
        J(body(messages=[{"role": "user", "content": "x"}, {"role": "user", "content": True}])),
        400,
        param="messages[1].content",
    ),
    # sampling parameters
    Case("temperature-negative", J(body(temperature=-1)), 400, param="temperature", words=("temperature", "0")),
    Case("temperature-2.5", J(body(temperature=2.5)), 400, param="temperature", words=("temperature", "2")),
    Case("temperature-string", J(body(temperature="hot")), 400, param="temperature", words=("temperature", "number")),
    Case("top_p-1.5", J(body(top_p=1.5)), 400, param="top_p", words=("top_p", "1")),
    Case("max_tokens-0", J(body(max_tokens=0)), 400, param="max_tokens", words=("max_tokens", "1")),
    Case("max_tokens-negative", J(body(max_tokens=-3)), 400, param="max_tokens", words=("max_tokens", "1")),
    Case("max_tokens-float", J(body(max_tokens=1.5)), 400, param="max_tokens", words=("max_tokens", "integer")),
    Case("max_tokens-string", J(body(max_tokens="5")), 400, param="max_tokens", words=("max_tokens", "integer")),
    Case("max_tokens-bool", J(body(max_tokens=True)), 400, param="max_tokens", words=("max_tokens", "integer")),
    Case("max_tokens-2**31", J(body(max_tokens=2**31)), 400, param="max_tokens", words=("max_tokens", str(2**31 - 1))),
    Case(
        "max_completion_tokens-0",
        J(body(max_tokens=..., max_completion_tokens=0)),
        400,
        param="max_completion_tokens",
        words=("max_completion_tokens", "1"),
    ),
    Case("top_k-negative", J(body(top_k=-1)), 400, param="top_k", words=("top_k", "0")),
    Case("min_p-2", J(body(min_p=2)), 400, param="min_p", words=("min_p", "1")),
    Case("stop-int", J(body(stop=123)), 400, param="stop", words=("stop", "string")),
    Case("stop-list-of-5", J(body(stop=["a", "b", "c", "d", "e"])), 400, param="stop", words=("stop", "4")),
    Case("stop-list-with-int", J(body(stop=["a", 1])), 400, param="stop"),
    Case(
        "presence_penalty-3",
        J(body(presence_penalty=3)),
        400,
        param="presence_penalty",
        words=("presence_penalty", "2"),
    ),
    Case(
        "frequency_penalty--3",
        J(body(frequency_penalty=-3)),
        400,
        param="frequency_penalty",
        words=("frequency_penalty", "-2"),
    ),
    Case(
        "repetition_penalty-0",
        J(body(repetition_penalty=0)),
        400,
        param="repetition_penalty",
        words=("repetition_penalty", "0"),
    ),
    Case("logit_bias-key-abc", J(body(logit_bias={"abc": 1})), 400, param="logit_bias", words=("logit_bias", "abc")),
    Case(
        "logit_bias-value-101", J(body(logit_bias={"5": 101})), 400, param="logit_bias.5", words=("logit_bias", "100")
    ),
    Case("logit_bias-list", J(body(logit_bias=[1, 2])), 400, param="logit_bias"),
    Case("logprobs-string", J(body(logprobs="yes")), 400, param="logprobs", words=("logprobs", "bool")),
    Case(
        "top_logprobs-21",
        J(body(logprobs=True, top_logprobs=21)),
        400,
        param="top_logprobs",
        words=("top_logprobs", "20"),
    ),
    Case("n-0", J(body(n=0)), 400, param="n", words=("n", "1")),
    Case("n-17", J(body(n=17)), 400, param="n", words=("n", "16")),
    Case("seed-float", J(body(seed=1.5)), 400, param="seed", words=("seed", "integer")),
    Case(
        "response_format-xml",  # json_object and json_schema are enforced now (test_structured.py)
        J(body(response_format={"type": "xml"})),
        400,
        param="response_format.type",
        words=("json_object", "text"),
    ),
    Case(
        "response_format-json_schema-unenforceable",
        J(body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"uniqueItems": True}}})),
        400,
        param="response_format",
        words=("json schema", "uniqueItems"),
    ),
    Case(
        "tools-without-function",
        J(body(tools=[{"type": "function"}])),
        400,
        param="tools[0].function",
        words=("function",),
    ),
    Case(
        "tool_choice-unknown-function",
        J(
            body(
                tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
                tool_choice={"type": "function", "function": {"name": "get_time"}},
            )
        ),
        400,
        param="tool_choice",
        words=("get_time",),
    ),
    Case("functions-legacy", J(body(functions=[{"name": "f"}])), 400, param="functions", words=("tools",)),
    Case("stream-yes", J(body(stream="yes")), 400, param="stream", words=("stream", "bool")),
    Case(
        "stream_options-include_usage-x",
        J(body(stream=True, stream_options={"include_usage": "x"})),
        400,
        param="stream_options.include_usage",
        words=("include_usage", "bool"),
    ),
    Case(
        "loop_guard-repeats-1",
        J(body(loop_guard={"repeats": 1})),
        400,
        param="loop_guard.repeats",
        words=("repeats", "2"),
    ),
    Case("loop_guard-string", J(body(loop_guard="x")), 400, param="loop_guard"),
    # text completions
    Case(
        "completions-prompt-missing",
        J(cbody(prompt=...)),
        400,
        path=COMPLETIONS,
        param="prompt",
        code="missing_parameter",
        words=("prompt", "required"),
    ),
    Case(
        "completions-prompt-int", J(cbody(prompt=5)), 400, path=COMPLETIONS, param="prompt", words=("prompt", "string")
    ),
    Case(
        "completions-prompt-empty-list",
        J(cbody(prompt=[])),
        400,
        path=COMPLETIONS,
        param="prompt",
        words=("prompt", "at least 1"),
    ),
    Case("completions-prompt-list-of-ints", J(cbody(prompt=[1, 2, 3])), 400, path=COMPLETIONS, param="prompt"),
    Case("completions-echo", J(cbody(echo=True)), 400, path=COMPLETIONS, param="echo", words=("echo", "not supported")),
    Case(
        "completions-suffix",
        J(cbody(suffix="x")),
        400,
        path=COMPLETIONS,
        param="suffix",
        words=("suffix", "not supported"),
    ),
    Case(
        "completions-logprobs-21",
        J(cbody(logprobs=21)),
        400,
        path=COMPLETIONS,
        param="logprobs",
        words=("logprobs", "20"),
    ),
    Case("completions-best_of-2", J(cbody(best_of=2)), 400, path=COMPLETIONS, param="best_of", words=("best_of", "1")),
    Case(
        "completions-unknown-model",
        J(cbody(model="nope")),
        404,
        path=COMPLETIONS,
        param="model",
        code="model_not_found",
        words=("nope",),
    ),
]


def _follow_up_ok(gw: Gateway) -> None:
    r = gw.http.post(CHAT, json=body())
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out["choices"][0]["message"]["content"], str)
    assert 1 <= out["usage"]["completion_tokens"] <= 2


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_request_is_a_clear_4xx_and_nothing_is_lost(gw: Gateway, case: Case) -> None:
    kwargs = case.request() if callable(case.request) else case.request
    r = gw.http.request(case.method, case.path, **kwargs)
    _follow_up_ok(gw)  # first: the gateway still serves, whatever the error looked like

    assert r.status_code == case.status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == case.type
    assert err["param"] == case.param
    if case.code is not None:
        assert err["code"] == case.code
    msg = err["message"]
    assert isinstance(msg, str) and msg.strip()
    for word in case.words:
        assert word.lower() in msg.lower(), f"{word!r} not in {msg!r}"


def test_unknown_fields_are_ignored(gw: Gateway) -> None:
    r = gw.http.post(CHAT, json=body(foo=1, bar={"nested": [1, 2]}, parallel_tool_calls=False, metadata={"k": "v"}))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2


def test_max_tokens_beyond_the_context_is_clamped(gw: Gateway, tokenizer: Tokenizer) -> None:
    """A prompt that nearly fills the context and max_tokens 1e6: the answer stops at the context."""
    prompt = "a " * 8180
    n_prompt = len(tokenizer.encode(prompt).ids)
    assert CONTEXT - 64 < n_prompt < CONTEXT  # leaves a little room, so the test stays quick
    r = gw.http.post(COMPLETIONS, json=cbody(prompt=prompt, max_tokens=1_000_000))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["finish_reason"] == "length"
    use = out["usage"]
    assert use["prompt_tokens"] == n_prompt
    assert use["completion_tokens"] == CONTEXT - n_prompt
    assert use["total_tokens"] == CONTEXT


def _numbers(msg: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", msg)]


def test_prompt_longer_than_the_context_is_a_400(gw: Gateway, tokenizer: Tokenizer) -> None:
    prompt = "a " * 9000
    n_prompt = len(tokenizer.encode(prompt).ids)
    assert n_prompt > CONTEXT
    r = gw.http.post(COMPLETIONS, json=cbody(prompt=prompt))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "context_length_exceeded"
    assert n_prompt in _numbers(err["message"]) and CONTEXT in _numbers(err["message"]), err["message"]

    r = gw.http.post(CHAT, json=body(messages=[{"role": "user", "content": prompt}]))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "messages" and err["code"] == "context_length_exceeded"
    nums = _numbers(err["message"])
    assert CONTEXT in nums and any(n > n_prompt for n in nums), err["message"]  # the prompt plus its chat template

    with gw.http.stream("POST", CHAT, json=body(messages=[{"role": "user", "content": prompt}], stream=True)) as s:
        s.read()
        assert s.status_code == 400, "an error before the first token is a plain JSON error, even when streaming"
        assert s.json()["error"]["code"] == "context_length_exceeded"
    _follow_up_ok(gw)


def test_prompt_at_exactly_the_context_is_a_400(gw: Gateway, tokenizer: Tokenizer) -> None:
    prompt = "a " * (CONTEXT // 2)
    assert len(tokenizer.encode(prompt).ids) == CONTEXT  # no room for even one token
    r = gw.http.post(COMPLETIONS, json=cbody(prompt=prompt))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_completions_context_error_names_prompt(gw: Gateway) -> None:
    r = gw.http.post(COMPLETIONS, json=cbody(prompt="a " * 9000))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "prompt"
