"""Fuzzing the HTTP edge with hypothesis: request bodies mixing valid and invalid values for every
field, random extra fields and raw bytes. Whatever comes in, the answer is never a 5xx, always
JSON with "choices" or "error" (or, streaming, SSE ending in [DONE] or an error event), and the
gateway keeps serving afterwards.

Values at the model's limits that once broke a worker (top_k past the vocabulary, out-of-vocabulary
logit_bias ids, negative or 64-bit seeds) are fuzzed too, and also have regression tests of their
own at the end, on a gateway of their own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.servers import Gateway, chat, sse_events, serving

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MAX_INT = 2**31 - 1
ABSENT = object()

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# -- strategies -------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=10,
)


def _is_int(v: Any) -> bool:
    return type(v) is int


def excluded(name: str, v: Any) -> bool:
    """Valid values kept out of the fuzz because they are slow (long answers, many choices)."""
    if name in ("max_tokens", "max_completion_tokens"):
        return _is_int(v) and 4 <= v <= MAX_INT  # valid and slow: the fuzz keeps answers short
    if name == "n":
        return _is_int(v) and 5 <= v <= 16  # valid; kept small so the fuzz stays quick
    return False


def junk(name: str) -> st.SearchStrategy[Any]:
    return json_values.filter(lambda v: not excluded(name, v))


text = st.one_of(
    st.text(max_size=40), st.sampled_from(["<|im_end|>", "<|im_start|>user\n", "<|endoftext|>", "東京 🚀 Köln", ""])
)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool"])
text_part = st.fixed_dictionaries({"type": st.just("text"), "text": text})
good_message = st.fixed_dictionaries(
    {"role": roles, "content": st.one_of(text, st.none(), st.lists(text_part, max_size=3))},
    optional={"name": st.text(max_size=8)},
)
bad_message = st.one_of(
    st.fixed_dictionaries({"role": st.text(max_size=10), "content": text}),
    st.fixed_dictionaries(
        {"role": roles, "content": st.integers() | st.booleans() | st.lists(st.integers(), min_size=1)}
    ),
    st.fixed_dictionaries(
        {
            "role": roles,
            "content": st.lists(
                st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio", "file", "x"])}), min_size=1
            ),
        }
    ),
    st.fixed_dictionaries({"content": text}),
    json_values,
)
small_floats = st.floats(allow_nan=False, allow_infinity=False)


def prob() -> st.SearchStrategy[Any]:
    return st.floats(0, 1) | st.sampled_from([0, 1])


# name -> (good values, bad values); every good strategy includes None where the schema allows it
CHAT_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "model": (st.just("tiny"), st.text(max_size=10).filter(lambda s: s != "tiny") | junk("model")),
    "messages": (
        st.lists(good_message, min_size=1, max_size=3),
        st.one_of(
            st.just([]), st.lists(st.one_of(good_message, bad_message), min_size=1, max_size=3), junk("messages")
        ),
    ),
    "max_tokens": (
        st.integers(1, 3) | st.none(),
        st.sampled_from([0, -3, 1.5, "5", True, 2**31, 2**64]) | junk("max_tokens"),
    ),
    "max_completion_tokens": (
        st.integers(1, 3) | st.none(),
        st.sampled_from([0, -1, "2", 2.0]) | junk("max_completion_tokens"),
    ),
    "temperature": (
        st.floats(0, 2) | st.integers(0, 2) | st.none(),
        st.sampled_from([-1, 2.5, "hot", -1e-9]) | junk("temperature"),
    ),
    "top_p": (prob() | st.none(), st.sampled_from([1.5, -0.1, "0.9"]) | junk("top_p")),
    "top_k": (st.integers(0, MAX_INT) | st.none(), st.sampled_from([-1, 1.5, "5"]) | junk("top_k")),
    "min_p": (prob() | st.none(), st.sampled_from([2, -1, "0.1"]) | junk("min_p")),
    "seed": (
        st.integers(-(2**63), 2**64 - 1) | st.none(),
        st.sampled_from([1.5, "42", 2**64, -(2**63) - 1]) | junk("seed"),
    ),
    "stop": (
        st.none() | text | st.lists(text, max_size=4),
        st.sampled_from([123, ["a", "b", "c", "d", "e"], [1], {"a": 1}]) | junk("stop"),
    ),
    "presence_penalty": (st.floats(-2, 2) | st.none(), st.sampled_from([3, -2.5, "1"]) | junk("presence_penalty")),
    "frequency_penalty": (st.floats(-2, 2) | st.none(), st.sampled_from([-3, 2.01, "0"]) | junk("frequency_penalty")),
    "repetition_penalty": (
        st.floats(0, 10, exclude_min=True) | st.none(),
        st.sampled_from([0, -1, 10.5, "1.1"]) | junk("repetition_penalty"),
    ),
    "repetition_context_size": (
        st.integers(1, MAX_INT) | st.none(),
        st.sampled_from([0, -5, 1.5]) | junk("repetition_context_size"),
    ),
    "logit_bias": (
        st.none()
        | st.dictionaries(
            st.integers(0, MAX_INT - 1).map(str), st.floats(-100, 100) | st.integers(-100, 100), max_size=4
        ),
        st.sampled_from([{"abc": 1}, {"5": 101}, {"-1": 1}, {"1": "x"}, [1]]) | junk("logit_bias"),
    ),
    "logprobs": (st.booleans(), st.sampled_from([1, "true", None]) | junk("logprobs")),
    "top_logprobs": (st.integers(0, 20) | st.none(), st.sampled_from([21, -1, "3"]) | junk("top_logprobs")),
    "n": (st.integers(1, 4), st.sampled_from([0, 17, -1, 1.0, "2"]) | junk("n")),
    "stream": (st.booleans(), st.sampled_from(["yes", 1, None]) | junk("stream")),
    "stream_options": (
        st.none() | st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
        st.sampled_from([{"include_usage": "x"}, True, []]) | junk("stream_options"),
    ),
    "response_format": (
        st.none() | st.just({"type": "text"}) | st.just({"type": "json_object"}),
        st.sampled_from([{"type": "xml"}, {"type": 1}, "json"]) | junk("response_format"),
    ),
    "tools": (st.none() | st.just([]), st.lists(json_values, min_size=1, max_size=2) | st.sampled_from([{}, "x"])),
    "user": (st.none() | st.text(max_size=10), st.integers() | st.lists(st.text(), min_size=1)),
    "loop_guard": (
        st.none()
        | st.booleans()
        | st.fixed_dictionaries(
            {},
            optional={
                "repeats": st.integers(2, 1000),
                "max_cycle": st.integers(1, 512),
                "min_span": st.integers(1, 100_000),
            },
        ),
        st.sampled_from([{"repeats": 1}, {"max_cycle": 0}, "on", 1]) | junk("loop_guard"),
    ),
}
KNOWN = set(CHAT_FIELDS) | {"prompt", "echo", "suffix", "best_of"}
extra_fields = st.dictionaries(st.text(max_size=12).filter(lambda k: k not in KNOWN), json_values, max_size=3)


@st.composite
def request_bodies(
    draw: st.DrawFn, fields: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]
) -> dict[str, Any]:
    """A body whose fields are each absent, valid or invalid; about half are valid throughout."""
    all_valid = draw(st.booleans())
    body: dict[str, Any] = {}
    for name, (good, bad) in fields.items():
        pick = draw(st.sampled_from(["absent", "good", "good"] if all_valid else ["absent", "good", "good", "bad"]))
        if name in ("model", "messages", "prompt") and pick == "absent" and draw(st.integers(0, 9)):
            pick = "good"  # mostly present, so that most bodies get as far as a worker
        if pick == "good":
            body[name] = draw(good)
        elif pick == "bad":
            body[name] = draw(bad)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = draw(st.integers(1, 3))  # never an unbounded generation
    extra = draw(extra_fields)
    return {**extra, **body}


# -- checks ------------------------------------------------------------------------------------


def check_error_body(j: Any) -> None:
    assert isinstance(j, dict) and set(j) == {"error"}, j
    err = j["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err


def post_and_check(gw: Gateway, path: str, **kwargs: Any) -> tuple[int, Any]:
    """Send one request; assert no 5xx and a well-formed answer; return (status, parsed body)."""
    with gw.http.stream("POST", path, **kwargs) as r:
        r.read()
        assert r.status_code < 500, f"{r.status_code} {r.text[:500]}\n{gw.log()[-2000:]}"
        ctype = r.headers.get("content-type", "")
        if ctype.startswith("text/event-stream"):
            assert r.status_code == 200
            events = sse_events(r)
            assert events, "an empty event stream"
            last = events[-1]
            assert last == "[DONE]" or (isinstance(last, dict) and "error" in last), last
            if isinstance(last, dict):
                check_error_body(last)
                raise AssertionError(f"the stream of a valid request ended with an error: {last}")
            return r.status_code, events
        assert ctype.startswith("application/json"), ctype
        j = r.json()
        if r.status_code == 200:
            assert isinstance(j, dict) and isinstance(j.get("choices"), list) and j["choices"], j
        else:
            assert 400 <= r.status_code < 500
            check_error_body(j)
        return r.status_code, j


def normal_requests_still_work(gw: Gateway) -> None:
    for params in ({}, {"temperature": 1.0, "seed": 7}, {"stream": True}):
        status, out = post_and_check(gw, CHAT, json=chat("tiny", max_tokens=3, **params))
        assert status == 200, out


# -- the fuzz ------------------------------------------------------------------------------------


def test_fuzz_chat_bodies(tiny_gateway: Gateway) -> None:
    seen: dict[int, int] = {}

    @FUZZ
    @given(request_bodies(CHAT_FIELDS))
    def run(body: dict[str, Any]) -> None:
        status, out = post_and_check(tiny_gateway, CHAT, json=body)
        seen[status] = seen.get(status, 0) + 1
        if status == 200 and isinstance(out, dict):
            n = body.get("n", 1)
            assert len(out["choices"]) == n
            assert all(isinstance(c["message"]["content"], str) for c in out["choices"])

    run()
    print(f"statuses: {seen}")
    assert seen.get(200, 0) >= 10, f"too few bodies were valid, the fuzz hardly reached a worker: {seen}"
    assert sum(v for k, v in seen.items() if 400 <= k < 500) >= 10, seen
    normal_requests_still_work(tiny_gateway)


COMPLETION_FIELDS = {
    **{
        k: v
        for k, v in CHAT_FIELDS.items()
        if k not in ("messages", "max_completion_tokens", "logprobs", "top_logprobs", "response_format", "tools")
    },
    "prompt": (
        text.filter(bool) | st.lists(text.filter(bool), min_size=1, max_size=3),
        st.sampled_from([5, [], [1], "", [""], None]) | junk("prompt"),
    ),
    "logprobs": (st.integers(0, 5) | st.none(), st.sampled_from([21, -1, True, "2"]) | junk("logprobs")),
    "echo": (st.just(False), st.sampled_from([True, "yes", 1])),
    "suffix": (st.none(), st.text(min_size=1, max_size=5)),
    "best_of": (st.just(1) | st.none(), st.sampled_from([0, 2, "1"])),
}


def test_fuzz_completion_bodies(tiny_gateway: Gateway) -> None:
    @settings(FUZZ, max_examples=100)
    @given(request_bodies(COMPLETION_FIELDS))
    def run(body: dict[str, Any]) -> None:
        status, out = post_and_check(tiny_gateway, COMPLETIONS, json=body)
        if status == 200 and isinstance(out, dict):
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            assert len(out["choices"]) == len(prompts) * body.get("n", 1)

    run()
    normal_requests_still_work(tiny_gateway)


def _encode(v: Any) -> bytes:
    return json.dumps(v, allow_nan=True).encode()


raw_bodies = st.one_of(
    st.binary(max_size=400),
    json_values.map(_encode),
    request_bodies(CHAT_FIELDS).map(_encode).map(lambda b: b[: len(b) // 2]),  # truncated JSON
    st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "APPLICATION/JSON",
        "text/plain",
        "",
        "multipart/form-data",
    ]
)


def test_fuzz_raw_bytes(tiny_gateway: Gateway) -> None:
    @FUZZ
    @given(raw_bodies, content_types, st.sampled_from([CHAT, COMPLETIONS]))
    def run(data: bytes, ctype: str, path: str) -> None:
        post_and_check(tiny_gateway, path, content=data, headers={"content-type": ctype})

    run()
    normal_requests_still_work(tiny_gateway)


def test_floats_that_are_not_json(tiny_gateway: Gateway) -> None:
    for lit in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        data = (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "temperature": '
            + lit
            + b"}"
        )
        status, out = post_and_check(tiny_gateway, CHAT, content=data, headers={"content-type": "application/json"})
        assert status == 400 and out["error"]["code"] == "invalid_json", out


# -- regressions: values at the model's limits, once 5xx; on a gateway of their own ---------------


@pytest.fixture(scope="module")
def victim(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("fuzz-victim")
    with serving(tmp, [{"name": "tiny", "path": str(tiny_model), "max_batch": 4}], server={"restart_limit": 10}) as g:
        yield g


def small(**params: Any) -> dict[str, Any]:
    return chat("tiny", "Hi", max_tokens=2, **params)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(small(temperature=1, seed=-1), id="seed-negative"),
        pytest.param(small(temperature=1, seed=2**64 - 1, n=2), id="seed-max-with-n-2"),
        pytest.param(small(logit_bias={"²": 1}), id="logit_bias-unicode-digit-key"),
        pytest.param(small(logit_bias={"99999999999999999999": 1}), id="logit_bias-huge-key"),
        pytest.param(small(temperature=1, top_k=600), id="top_k-beyond-vocab"),
    ],
)
def test_schema_valid_values_never_5xx(victim: Gateway, body: dict[str, Any]) -> None:
    r = victim.http.post(CHAT, json=body)
    assert r.status_code < 500, r.text


def test_a_failed_step_does_not_poison_the_worker(victim: Gateway) -> None:
    victim.http.post(CHAT, json=small(temperature=1, top_k=600))  # once failed its batch step
    r = victim.http.post(CHAT, json=small(temperature=1))
    assert r.status_code == 200, r.text


def test_a_bad_request_does_not_fail_its_batch_mates(victim: Gateway) -> None:
    with victim.http.stream("POST", CHAT, json=chat("tiny", "Tell me a story", max_tokens=2000, stream=True)) as s:
        assert s.status_code == 200
        lines = s.iter_lines()
        for line in lines:
            if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                break  # generating: the good request is in the batch now
        bad: list[httpx.Response] = []
        t = threading.Thread(
            target=lambda: bad.append(httpx.post(victim.url + CHAT, json=small(temperature=1, top_k=600), timeout=60))
        )
        t.start()
        rest = [json.loads(x[6:]) if x[6:] != "[DONE]" else "[DONE]" for x in lines if x.startswith("data: ")]
        t.join()
    assert rest[-1] == "[DONE]", rest[-1]


def test_out_of_vocabulary_logit_bias_is_refused(victim: Gateway) -> None:
    statuses = []
    for token in ("487", "100000"):
        statuses.append(victim.http.post(CHAT, json=small(logit_bias={token: 1})).status_code)
        victim.wait_ready()
    assert statuses == [400, 400]
