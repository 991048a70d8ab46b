"""gateway.bodies.validate with the OpenAI schemas, and translate.params_for (pure, no server)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bodies import validate
from gateway.errors import InvalidRequest
from gateway.openai.schemas import MAX_INT, ChatCompletionRequest, CompletionRequest
from gateway.openai.translate import params_for
from shared.config import ModelConfig
from shared.protocol import GENERATE_PARAMS

MSGS = [{"role": "user", "content": "Grüße 🚀"}]


def body(**params: Any) -> dict[str, Any]:
    """A small valid chat body with ``params`` set (a value of ``...`` removes the field)."""
    b: dict[str, Any] = {"model": "tiny", "messages": MSGS}
    b.update(params)
    return {k: v for k, v in b.items() if v is not ...}


# (id, body, expected param, words that must be in the message (case-insensitive))
FN = {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}
TOOL = {"type": "function", "function": FN}
FUNCTION_CALL = {"name": "f", "arguments": '{"x": 1}'}


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


BAD: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    ("messages-missing", body(messages=...), "messages", ("required",)),
    ("model-missing", body(model=...), "model", ("required",)),
    ("model-int", body(model=7), "model", ("string",)),
    ("messages-empty", body(messages=[]), "messages", ("at least 1",)),
    ("messages-object", body(messages={"role": "user", "content": "x"}), "messages", ("list",)),
    ("message-a-string", body(messages=["hi"]), "messages[0]", ()),
    ("role-wizard", body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role", ("user",)),
    ("role-missing", body(messages=[{"content": "x"}]), "messages[0].role", ("required",)),
    ("second-role-bad", body(messages=[*MSGS, {"role": "robot", "content": "x"}]), "messages[1].role", ()),
    ("content-int", body(messages=[{"role": "user", "content": 5}]), "messages[0].content", ()),
    (
        "content-image",
        body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]),
        "messages[0].content",
        ("image_url", "text-only"),
    ),
    (
        "content-input-audio",
        body(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]}]),
        "messages[0].content",
        ("part 1", "text-only"),
    ),
    (
        "content-part-no-text",
        body(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        "messages[0].content",
        ("text",),
    ),
    ("temperature-3", body(temperature=3), "temperature", ("2",)),
    ("temperature-negative", body(temperature=-0.1), "temperature", ("0",)),
    ("temperature-hot", body(temperature="hot"), "temperature", ("number",)),
    ("temperature-bool", body(temperature=True), "temperature", ()),
    ("top_p-1.5", body(top_p=1.5), "top_p", ("1",)),
    ("top_p-string", body(top_p="0.5"), "top_p", ()),
    ("top_k-negative", body(top_k=-1), "top_k", ("0",)),
    ("top_k-float", body(top_k=2.0), "top_k", ("integer",)),
    ("min_p-2", body(min_p=2), "min_p", ("1",)),
    ("max_tokens-0", body(max_tokens=0), "max_tokens", ("1",)),
    ("max_tokens-negative", body(max_tokens=-5), "max_tokens", ("1",)),
    ("max_tokens-1.5", body(max_tokens=1.5), "max_tokens", ("integer",)),
    ("max_tokens-'5'", body(max_tokens="5"), "max_tokens", ("integer",)),
    ("max_tokens-2**31", body(max_tokens=2**31), "max_tokens", (str(MAX_INT),)),
    ("max_tokens-True", body(max_tokens=True), "max_tokens", ("integer",)),
    ("max_completion_tokens-0", body(max_completion_tokens=0), "max_completion_tokens", ("1",)),
    ("stop-123", body(stop=123), "stop", ("string",)),
    ("stop-5-strings", body(stop=["a", "b", "c", "d", "e"]), "stop", ("4",)),
    ("stop-list-with-int", body(stop=["a", 1]), "stop", ()),
    ("logit_bias-abc", body(logit_bias={"abc": 1}), "logit_bias", ("abc",)),
    ("logit_bias-negative-id", body(logit_bias={"-1": 1}), "logit_bias", ()),
    ("logit_bias-huge-id", body(logit_bias={"99999999999": 1}), "logit_bias", ()),
    ("logit_bias-non-ascii-digit", body(logit_bias={"٣": 1}), "logit_bias", ()),
    ("logit_bias-500", body(logit_bias={"5": 500}), "logit_bias.5", ("100",)),
    ("logit_bias-string-value", body(logit_bias={"5": "1"}), "logit_bias.5", ()),
    ("logit_bias-list", body(logit_bias=[1, 2]), "logit_bias", ()),
    ("presence_penalty-3", body(presence_penalty=3), "presence_penalty", ("2",)),
    ("frequency_penalty--3", body(frequency_penalty=-3), "frequency_penalty", ("-2",)),
    ("repetition_penalty-0", body(repetition_penalty=0), "repetition_penalty", ("0",)),
    ("repetition_penalty-11", body(repetition_penalty=11), "repetition_penalty", ("10",)),
    ("repetition_context_size-0", body(repetition_context_size=0), "repetition_context_size", ("1",)),
    ("seed-float", body(seed=1.5), "seed", ("integer",)),
    ("seed-2**64", body(seed=2**64), "seed", ()),
    ("n-0", body(n=0), "n", ("1",)),
    ("n-17", body(n=17), "n", ("16",)),
    ("n-string", body(n="2"), "n", ()),
    ("logprobs-string", body(logprobs="yes"), "logprobs", ("bool",)),
    ("top_logprobs-21", body(logprobs=True, top_logprobs=21), "top_logprobs", ("20",)),
    ("top_logprobs-negative", body(top_logprobs=-1), "top_logprobs", ("0",)),
    ("tools-no-function", body(tools=[{"type": "function"}]), "tools[0].function", ()),
    ("tools-not-function", body(tools=[{"type": "web_search", "function": FN}]), "tools[0].type", ("function",)),
    ("tools-bad-name", body(tools=[{"type": "function", "function": {"name": "a b"}}]), "tools[0].function.name", ()),
    ("tools-dupes", body(tools=[TOOL, TOOL]), "tools", ("unique", "f")),
    ("tools-object", body(tools={"type": "function"}), "tools", ("list",)),
    ("tool_choice-word", body(tools=[TOOL], tool_choice="always"), "tool_choice", ()),
    ("tool_choice-other-function", body(tools=[TOOL], tool_choice=named("g")), "tool_choice", ("'g'",)),
    ("tool_choice-required-without-tools", body(tool_choice="required"), "tool_choice", ("tools",)),
    ("tool_choice-named-without-tools", body(tool_choice=named("f")), "tool_choice", ("tools",)),
    ("parallel_tool_calls-string", body(tools=[TOOL], parallel_tool_calls="no"), "parallel_tool_calls", ("bool",)),
    ("functions-legacy", body(functions=[{"name": "f"}]), "functions", ("use tools",)),
    ("function_call-legacy", body(function_call="auto"), "function_call", ("use tool_choice",)),
    ("tool-message-without-id", body(messages=[{"role": "tool", "content": "42"}]), "messages[0]", ("tool_call_id",)),
    (
        "tool-call-arguments-object",
        body(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}]),
        "messages[0].tool_calls[0].function.arguments",
        ("string",),
    ),
    (
        "tool_calls-on-a-user-message",
        body(messages=[{"role": "user", "content": "x", "tool_calls": []}]),
        "messages[0]",
        ("assistant",),
    ),
    ("response_format-xml", body(response_format={"type": "xml"}), "response_format.type", ("json_object",)),
    (
        "response_format-unenforceable-schema",
        body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}),
        "response_format",
        ("not",),
    ),
    ("stream-yes", body(stream="yes"), "stream", ("bool",)),
    ("stream_options-bad", body(stream_options={"include_usage": "y"}), "stream_options.include_usage", ("bool",)),
    ("loop_guard-repeats-1", body(loop_guard={"repeats": 1}), "loop_guard.repeats", ("2",)),
    ("loop_guard-string", body(loop_guard="x"), "loop_guard", ()),
    ("user-int", body(user=5), "user", ()),
]


@pytest.mark.parametrize(("data", "param", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_body_names_its_parameter(data: dict[str, Any], param: str, words: tuple[str, ...]) -> None:
    with pytest.raises(InvalidRequest) as e:
        validate(ChatCompletionRequest, data)
    err = e.value
    assert err.param == param, err.message
    assert err.status == 400 and err.type == "invalid_request_error"
    assert err.message.startswith(f"{param}: ")
    assert err.code in ("invalid_parameter", "missing_parameter")
    for word in words:
        assert word.lower() in err.message.lower(), err.message
    assert err.body()["error"]["param"] == param


def test_missing_is_missing_parameter_and_a_bad_value_invalid_parameter() -> None:
    with pytest.raises(InvalidRequest) as e:
        validate(ChatCompletionRequest, body(messages=...))
    assert e.value.code == "missing_parameter"
    with pytest.raises(InvalidRequest) as e:
        validate(ChatCompletionRequest, body(temperature=5))
    assert e.value.code == "invalid_parameter"


def test_value_error_prefix_is_stripped() -> None:
    with pytest.raises(InvalidRequest) as e:
        validate(ChatCompletionRequest, body(functions=[{"name": "f"}]))
    assert "Value error" not in e.value.message


def test_image_part_says_the_model_is_text_only() -> None:
    data = body(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ],
            }
        ]
    )
    with pytest.raises(InvalidRequest, match="text-only"):
        validate(ChatCompletionRequest, data)


@pytest.mark.parametrize("data", [[], [MSGS], "hello", 5, 1.5, None, True], ids=repr)
def test_non_object_body(data: Any) -> None:
    with pytest.raises(InvalidRequest) as e:
        validate(ChatCompletionRequest, data)
    assert e.value.code == "invalid_body"
    assert e.value.param is None
    assert "object" in e.value.message


def test_valid_body_parses() -> None:
    req = validate(
        ChatCompletionRequest,
        body(
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": None},
                {"role": "user", "content": [{"type": "text", "text": "Grüße "}, {"type": "text", "text": "東京"}]},
                {"role": "assistant", "content": "ok", "name": "bot"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": FUNCTION_CALL}]},
                {"role": "tool", "content": "42", "tool_call_id": "c1"},
            ],
            temperature=0,
            top_p=1,
            top_k=0,
            min_p=0.05,
            seed=-1,
            stop=["\n", "END"],
            presence_penalty=-2,
            frequency_penalty=2,
            repetition_penalty=1.1,
            repetition_context_size=64,
            logit_bias={"0": -100, "42": 100, "7": 0.5},
            n=16,
            stream=True,
            stream_options={"include_usage": True},
            user="me",
            loop_guard={"repeats": 3},
            logprobs=True,
            top_logprobs=20,
            response_format={"type": "text"},
            tools=[TOOL, {"type": "function", "function": {"name": "g.h-2", "description": "d", "strict": True}}],
            tool_choice=named("g.h-2"),
            parallel_tool_calls=False,
            max_tokens=MAX_INT,
        ),
    )
    assert isinstance(req, ChatCompletionRequest)
    assert [m.text() for m in req.messages] == ["be brief", "", "Grüße 東京", "ok", "", "42"]
    assert req.messages[4].tool_calls and req.messages[4].tool_calls[0].function.arguments == '{"x": 1}'
    assert req.tools and req.tools[1].function.name == "g.h-2" and req.parallel_tool_calls is False
    assert req.temperature == 0 and req.n == 16 and req.stream is True
    assert req.stop == ["\n", "END"]
    assert req.max_tokens == MAX_INT
    assert req.loop_guard is not None and req.loop_guard.repeats == 3  # type: ignore[union-attr]


def test_minimal_body_has_openai_defaults() -> None:
    req = validate(ChatCompletionRequest, body())
    assert req.n == 1 and req.stream is False and req.logprobs is False
    assert req.max_tokens is None and req.temperature is None and req.stop is None


@pytest.mark.parametrize("n", [1, 2, 16])
def test_n_up_to_16_is_allowed(n: int) -> None:
    """Several choices per request are supported (docs/api.md: n 1 … 16)."""
    assert validate(ChatCompletionRequest, body(n=n)).n == n


def test_stop_may_be_a_single_string() -> None:
    assert validate(ChatCompletionRequest, body(stop="END")).stop == "END"


def test_unknown_fields_are_ignored() -> None:
    req = validate(ChatCompletionRequest, body(frobnicate=True, parallel_tool_calls=False, metadata={"a": 1}))
    assert not hasattr(req, "frobnicate")
    req = validate(ChatCompletionRequest, body(messages=[{"role": "user", "content": "x", "extra": 1}]))
    assert req.messages[0].text() == "x"


def test_max_completion_tokens_is_used_as_max_tokens() -> None:
    assert validate(ChatCompletionRequest, body(max_completion_tokens=7)).max_tokens == 7
    # max_tokens, when given, wins
    assert validate(ChatCompletionRequest, body(max_tokens=3, max_completion_tokens=7)).max_tokens == 3


def test_integer_temperature_and_top_p_are_numbers() -> None:
    req = validate(ChatCompletionRequest, body(temperature=1, top_p=0))
    assert req.temperature == 1 and req.top_p == 0


def test_completion_request_validation() -> None:
    base = {"model": "m", "prompt": "Hello"}
    assert validate(CompletionRequest, base).prompt == "Hello"
    assert validate(CompletionRequest, {**base, "prompt": ["a", "b"]}).prompt == ["a", "b"]
    for bad, param in [
        ({"model": "m"}, "prompt"),
        ({**base, "prompt": 5}, "prompt"),
        ({**base, "prompt": []}, "prompt"),
        ({**base, "echo": True}, "echo"),
        ({**base, "suffix": "x"}, "suffix"),
        ({**base, "best_of": 2}, "best_of"),
        ({**base, "logprobs": 21}, "logprobs"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            validate(CompletionRequest, bad)
        assert e.value.param == param, (bad, e.value.message)


# ---- params_for ------------------------------------------------------------------------------

CFG = ModelConfig(name="tiny", path="/x", defaults={"repetition_penalty": 1.1, "temperature": 0.2})


def chat(**params: Any) -> ChatCompletionRequest:
    return validate(ChatCompletionRequest, body(**params))


def test_defaults_apply_when_the_request_sets_nothing() -> None:
    assert params_for(chat(), CFG) == {"repetition_penalty": 1.1, "temperature": 0.2}


def test_request_values_override_defaults() -> None:
    params = params_for(chat(temperature=0.9, repetition_penalty=1.3), CFG)
    assert params == {"repetition_penalty": 1.3, "temperature": 0.9}


def test_only_set_values_override_defaults() -> None:
    params = params_for(chat(top_p=0.5), CFG)
    assert params == {"repetition_penalty": 1.1, "temperature": 0.2, "top_p": 0.5}
    # an explicit null is "not set" and keeps the default
    assert params_for(chat(temperature=None), CFG)["temperature"] == 0.2


def test_zero_and_empty_values_do_override() -> None:
    cfg = ModelConfig(name="m", path="/x", defaults={"temperature": 0.7, "logit_bias": {"5": 10}, "top_k": 40})
    params = params_for(chat(temperature=0, logit_bias={}, top_k=0), cfg)
    assert params["temperature"] == 0
    assert params["logit_bias"] == {}  # docs/api.md: "logit_bias": {} clears a default bias
    assert params["top_k"] == 0
    guarded = ModelConfig(name="m", path="/x", defaults={"loop_guard": True})
    assert params_for(chat(loop_guard=False), guarded)["loop_guard"] is False


def test_params_for_does_not_modify_the_model_defaults() -> None:
    before = dict(CFG.defaults)
    params_for(chat(temperature=1.0, seed=3), CFG)
    assert CFG.defaults == before


def test_every_passed_param_is_forwarded() -> None:
    req = chat(
        max_tokens=5,
        temperature=0.5,
        top_p=0.9,
        top_k=3,
        min_p=0.1,
        seed=7,
        stop=["x"],
        presence_penalty=0.1,
        frequency_penalty=0.2,
        repetition_penalty=1.2,
        repetition_context_size=8,
        logit_bias={"1": 2},
        loop_guard=True,
        speculative=False,
    )
    params = params_for(req, ModelConfig(name="m", path="/x"))
    assert set(params) == set(GENERATE_PARAMS)
    assert params["speculative"] is False
    assert params["stop"] == ["x"] and params["logit_bias"] == {"1": 2} and params["loop_guard"] is True
    assert params["max_tokens"] == 5 and params["seed"] == 7


def test_nested_models_are_plain_dicts_and_max_completion_tokens_is_passed() -> None:
    params = params_for(chat(loop_guard={"repeats": 5}, max_completion_tokens=9), ModelConfig(name="m", path="/x"))
    assert params["loop_guard"] == {"repeats": 5, "max_cycle": 64, "min_span": 32}
    assert type(params["loop_guard"]) is dict
    assert params["max_tokens"] == 9


def test_logprobs() -> None:
    cfg = ModelConfig(name="m", path="/x")
    assert "logprobs" not in params_for(chat(), cfg)
    assert "logprobs" not in params_for(chat(top_logprobs=5), cfg)  # top_logprobs alone: no logprobs
    assert params_for(chat(logprobs=True), cfg)["logprobs"] == 0
    assert params_for(chat(logprobs=True, top_logprobs=4), cfg)["logprobs"] == 4
    comp = validate(CompletionRequest, {"model": "m", "prompt": "x", "logprobs": 3})
    assert params_for(comp, cfg)["logprobs"] == 3
    comp0 = validate(CompletionRequest, {"model": "m", "prompt": "x", "logprobs": 0})
    assert params_for(comp0, cfg)["logprobs"] == 0


# ---- fuzz: validate() returns a request or raises InvalidRequest, nothing else -----------------

CHAT_FIELDS = sorted(ChatCompletionRequest.model_fields)
_scalars = st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats(allow_nan=False) | st.text(max_size=6)
_values = st.recursive(
    _scalars | st.sampled_from(["user", "text", "image_url", "5", "-1"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["role", "content", "type", "text", "5", "repeats"]) | st.text(max_size=4),
            inner,
            max_size=3,
        )
    ),
    max_leaves=10,
)
_bodies = st.fixed_dictionaries({"model": st.just("m"), "messages": st.just(MSGS)}) | st.just({})


@settings(max_examples=300, deadline=None)
@given(base=_bodies, extra=st.dictionaries(st.sampled_from(CHAT_FIELDS) | st.text(max_size=5), _values, max_size=4))
def test_validate_of_arbitrary_objects_never_crashes(base: dict[str, Any], extra: dict[str, Any]) -> None:
    data = {**base, **extra}
    try:
        req = validate(ChatCompletionRequest, data)
    except InvalidRequest as e:
        assert e.param is None or e.param.split(".")[0].split("[")[0] in CHAT_FIELDS, e.param
        assert e.message
        return
    assert isinstance(req, ChatCompletionRequest)
    params_for(req, CFG)  # a valid request always translates


def test_tools_become_input_and_tool_choice_becomes_params() -> None:
    from gateway.openai.translate import chat_input

    req = validate(
        ChatCompletionRequest,
        body(
            messages=[
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": FUNCTION_CALL}]},
                {"role": "tool", "content": "42", "tool_call_id": "c1"},
            ],
            tools=[TOOL],
            tool_choice=named("f"),
            parallel_tool_calls=False,
        ),
    )
    inp = chat_input(req)
    assert inp["tools"] == [TOOL]
    assert inp["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "type": "function", "function": FUNCTION_CALL}],
    }
    assert inp["messages"][2] == {"role": "tool", "content": "42", "tool_call_id": "c1"}
    params = params_for(req, ModelConfig(name="m", path="/x"))
    assert params["tool_choice"] == {"name": "f"} and params["parallel_tool_calls"] is False
    plain = validate(ChatCompletionRequest, body(tools=[TOOL]))
    assert params_for(plain, ModelConfig(name="m", path="/x"))["tool_choice"] == "auto"
    assert "tools" not in chat_input(validate(ChatCompletionRequest, body(tool_choice="none")))
