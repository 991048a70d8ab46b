"""shared.codec + shared.protocol: the wire contract between gateway and workers (pure)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.codec import ProtocolError, decode, encode
from shared.protocol import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Cancel,
    Delta,
    Done,
    Drain,
    Embed,
    Embeddings,
    Error,
    Generate,
    Heartbeat,
    Hello,
    Kind,
    State,
    Step,
    Tokenize,
    Tokens,
    WorkerState,
)

NESTED = {
    "messages": [
        {"role": "system", "content": "Réponds en français. 東京 🚀"},
        {"role": "user", "content": 'Grüße\n\t"quoted" \\ back\u2028slash \u0000nul'},
    ],
    "deep": {"a": {"b": {"c": [1, 2.5, None, True, {"d": "ü"}]}}},
}

# One fully populated instance per message type (non-default values everywhere).
SAMPLES: list[Any] = [
    Generate(
        id="req-ü-1",
        model="smöl",
        input=NESTED,
        params={"temperature": 0.7, "stop": ["\n\n", "終"], "logit_bias": {"5": -100}, "loop_guard": {"repeats": 3}},
        stream=False,
    ),
    Cancel(id="req-東京"),
    Tokenize(id="t1", input={"prompt": "naïve café 🚀"}),
    Drain(),
    Hello(worker_id="w-1", model="tiny", pid=4242, protocol=PROTOCOL_VERSION, config_hash="abcdef0123456789"),
    State(state=WorkerState.FAILED, detail="load error: fichier introuvable ✗", context_length=16384),
    Heartbeat(running=3, waiting=2, cache_tokens=1000, cache_bytes=2**40, memory_bytes=2**33),
    Delta(
        id="r",
        text="Grüße 東京 🚀",
        tokens=4,
        logprobs=[{"token": "ü", "logprob": -0.5, "bytes": [195, 188], "top_logprobs": []}],
        tool_calls=[{"index": 0, "id": "call_ab12", "name": "get_wéather", "arguments": '{"city": "Köln"}'}],
    ),
    Done(
        id="r",
        finish_reason="stop",
        usage={"prompt_tokens": 5, "completion_tokens": 7},
        timings={"ttft": 0.012, "total": 1},
    ),
    Error(
        id="r",
        code="invalid_request",
        message="logit_bias: token id 9999 is not in the vocabulary ☹",
        param="logit_bias",
    ),
    Tokens(id="t1", count=12),
    Embed(
        id="e1",
        model="minilm",
        inputs=["Grüße 東京 🚀", [101, 7592, 102]],
        params={"truncate": True, "dimensions": None},
    ),
    Embeddings(id="e1", vectors=[[0.25, -1.0, 3], [0.5, 0.0, -0.125]], usage={"prompt_tokens": 9}),
    Step(
        events=[
            Delta(id="a", text="Grüße", tokens=3),
            Delta(id="b", text="", tokens=1, tool_calls=[{"index": 0, "id": "c", "name": "f", "arguments": "{}"}]),
            Done(id="a", finish_reason="stop", usage={"prompt_tokens": 5}),
            Error(id="c", code="generation_failed", message="boom"),
        ]
    ),
]


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())
    assert set(MESSAGE_TYPES) == set(Kind)
    for kind, cls in MESSAGE_TYPES.items():
        assert cls.KIND is kind


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Any) -> None:
    frames = encode(msg)
    assert len(frames) == 2 and all(isinstance(f, bytes) for f in frames)
    assert frames[0] == msg.KIND.value.encode("ascii")
    if isinstance(msg, Step):  # its events go as [kind, fields]
        expected = {"events": [[ev.KIND.value, dataclasses.asdict(ev)] for ev in msg.events]}
    else:
        expected = dataclasses.asdict(msg)
    assert orjson.loads(frames[1]) == orjson.loads(orjson.dumps(expected))
    back = decode(*frames)
    assert type(back) is type(msg)
    assert back == msg


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
def test_round_trip_of_defaults(cls: type) -> None:
    """Each type with only its required fields set survives the wire too."""
    required = {
        f.name: {"str": "x", "int": 1, "dict[str, Any]": {}, "WorkerState": WorkerState.READY, "list[Any]": []}[
            str(f.type)
        ]
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    msg = cls(**required)
    assert decode(*encode(msg)) == msg


def test_optional_fields_may_be_absent_and_take_their_defaults() -> None:
    assert decode(b"delta", b'{"id": "r", "text": "x", "tokens": 1}') == Delta("r", "x", 1, None)
    assert decode(b"done", b'{"id": "r", "finish_reason": "length"}') == Done("r", "length", {}, {})
    assert decode(b"heartbeat", b"{}") == Heartbeat()
    assert decode(b"drain", b"{}") == Drain()
    assert decode(b"generate", b'{"id": "a", "model": "m", "input": {}, "params": {}}').stream is True


def test_nullable_fields_accept_null() -> None:
    assert decode(b"error", b'{"id": "r", "code": "c", "message": "m", "param": null}').param is None
    assert decode(b"delta", b'{"id": "r", "text": "", "tokens": 0, "logprobs": null}').logprobs is None


@pytest.mark.parametrize("state", list(WorkerState))
def test_worker_state_is_decoded_to_the_enum(state: WorkerState) -> None:
    msg = decode(b"state", orjson.dumps({"state": state.value}))
    assert isinstance(msg, State)
    assert msg.state is state
    assert msg.detail == "" and msg.context_length == 0


@pytest.mark.parametrize("bad", ["sleeping", "READY", "", 1, True, None, [], {}])
def test_bad_worker_state_is_a_protocol_error(bad: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(b"state", orjson.dumps({"state": bad}))


def test_float_field_accepts_an_int_and_int_field_refuses_a_float() -> None:
    assert decode(b"done", b'{"id": "r", "finish_reason": "stop", "timings": {"t": 1}}').timings == {"t": 1}
    with pytest.raises(ProtocolError):
        decode(b"tokens", b'{"id": "r", "count": 1.0}')


def test_extra_unknown_fields_are_ignored() -> None:
    payload = orjson.dumps({"id": "x", "count": 3, "future_field": {"a": [1, 2]}, "another": None})
    assert decode(b"tokens", payload) == Tokens(id="x", count=3)
    assert decode(b"drain", b'{"whatever": 1}') == Drain()


ERRORS: list[tuple[str, bytes, bytes]] = [
    ("unknown kind", b"explode", b"{}"),
    ("empty kind", b"", b"{}"),
    ("kind in upper case", b"DONE", b'{"id": "r", "finish_reason": "stop"}'),
    ("kind with trailing byte", b"done\x00", b'{"id": "r", "finish_reason": "stop"}'),
    ("non-ASCII kind", "dön".encode(), b"{}"),
    ("non-UTF-8 kind", b"\xff\xfe", b"{}"),
    ("payload not JSON", b"cancel", b"{id: r}"),
    ("payload empty", b"cancel", b""),
    ("payload not UTF-8", b"cancel", b'{"id": "\xff"}'),
    ("payload NaN", b"heartbeat", b'{"running": NaN}'),
    ("payload a JSON list", b"cancel", b'["id", "r"]'),
    ("payload a JSON string", b"cancel", b'"r"'),
    ("payload JSON null", b"drain", b"null"),
    ("payload a JSON number", b"drain", b"1"),
    ("missing required field", b"cancel", b"{}"),
    ("missing one of several", b"hello", b'{"worker_id": "w", "model": "m", "pid": 1}'),
    ("required field null", b"cancel", b'{"id": null}'),
    ("non-nullable optional null", b"heartbeat", b'{"running": null}'),
    ("str where int expected", b"hello", b'{"worker_id": "w", "model": "m", "pid": "5", "protocol": 1}'),
    ("bool where int expected", b"hello", b'{"worker_id": "w", "model": "m", "pid": true, "protocol": 1}'),
    ("bool where int expected (optional)", b"heartbeat", b'{"running": false}'),
    ("float where int expected", b"delta", b'{"id": "r", "text": "", "tokens": 1.5}'),
    ("list where dict expected", b"generate", b'{"id": "r", "model": "m", "input": [], "params": {}}'),
    ("dict where list expected", b"delta", b'{"id": "r", "text": "", "tokens": 1, "logprobs": {}}'),
    ("int where str expected", b"cancel", b'{"id": 5}'),
    ("int where bool expected", b"generate", b'{"id": "r", "model": "m", "input": {}, "params": {}, "stream": 1}'),
    ("str in usage", b"done", b'{"id": "r", "finish_reason": "stop", "usage": {"prompt_tokens": "5"}}'),
    ("bool in usage", b"done", b'{"id": "r", "finish_reason": "stop", "usage": {"prompt_tokens": true}}'),
    ("tool_calls not a list", b"delta", b'{"id": "r", "text": "", "tokens": 1, "tool_calls": {}}'),
    ("tool call not an object", b"delta", b'{"id": "r", "text": "", "tokens": 1, "tool_calls": ["f"]}'),
    (
        "tool call without arguments",
        b"delta",
        b'{"id": "r", "text": "", "tokens": 1, "tool_calls": [{"index": 0, "id": "c", "name": "f"}]}',
    ),
    (
        "tool call arguments as an object",
        b"delta",
        b'{"id": "r", "text": "", "tokens": 1, "tool_calls": [{"index": 0, "id": "c", "name": "f", "arguments": {}}]}',
    ),
    (
        "tool call index a bool",
        b"delta",
        b'{"id": "r", "text": "", "tokens": 1, '
        b'"tool_calls": [{"index": true, "id": "c", "name": "f", "arguments": "{}"}]}',
    ),
    ("step events not a list", b"step", b'{"events": {}}'),
    ("step event not a pair", b"step", b'{"events": [["delta"]]}'),
    ("step event of unknown kind", b"step", b'{"events": [["nope", {}]]}'),
    ("step event of a kind a step can't hold", b"step", b'{"events": [["hello", {}]]}'),
    ("step inside a step", b"step", b'{"events": [["step", {"events": []}]]}'),
    ("step event with a bad field", b"step", b'{"events": [["delta", {"id": "r", "text": 1, "tokens": 1}]]}'),
    ("dict in timings", b"done", b'{"id": "r", "finish_reason": "stop", "timings": {"t": {}}}'),
    ("null in timings", b"done", b'{"id": "r", "finish_reason": "stop", "timings": {"t": null}}'),
]


@pytest.mark.parametrize(("kind", "payload"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_malformed_messages_raise_protocol_error(kind: bytes, payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(kind, payload)


def test_protocol_error_is_a_value_error_and_names_the_problem() -> None:
    assert issubclass(ProtocolError, ValueError)
    with pytest.raises(ProtocolError, match="pid"):
        decode(b"hello", b'{"worker_id": "w", "model": "m", "pid": "5", "protocol": 1}')
    with pytest.raises(ProtocolError, match="'id'"):
        decode(b"cancel", b"{}")
    with pytest.raises(ProtocolError, match="unknown message kind"):
        decode(b"nope", b"{}")


# ---- fuzz: decode never raises anything but ProtocolError -------------------------------------

FIELD_NAMES = sorted({f.name for cls in MESSAGE_TYPES.values() for f in dataclasses.fields(cls)})
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN / inf become invalid JSON via json.dumps: also a case to survive
    | st.text(max_size=8)
    | st.sampled_from([s.value for s in WorkerState])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), json_values, max_size=8)
payloads = st.one_of(
    objects.map(lambda o: json.dumps(o).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
)
kinds = st.sampled_from([k.value.encode() for k in Kind]) | st.binary(max_size=12)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=kinds, payload=payloads)
def test_decode_of_arbitrary_frames_returns_a_message_or_raises_protocol_error(kind: bytes, payload: bytes) -> None:
    try:
        msg = decode(kind, payload)
    except ProtocolError:
        return
    assert isinstance(msg, tuple(MESSAGE_TYPES.values()))
    assert msg.KIND.value.encode() == kind
    # What decodes also re-encodes and decodes to the same message.
    assert decode(*encode(msg)) == msg


@settings(max_examples=300, deadline=None)
@given(
    msg=st.sampled_from(SAMPLES),
    field=st.sampled_from(FIELD_NAMES),
    value=json_values,
)
def test_decode_of_a_message_with_one_field_replaced_never_crashes(msg: Any, field: str, value: Any) -> None:
    obj = orjson.loads(encode(msg)[1])
    obj[field] = value
    try:
        payload = json.dumps(obj).encode()
    except ValueError:
        return
    try:
        back = decode(msg.KIND.value.encode(), payload)
    except ProtocolError:
        return
    assert type(back) is type(msg)
