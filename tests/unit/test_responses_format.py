"""The Responses output builder, in-process: the stream's events (order, indexes, sequence
numbers) and the response object they add up to, for text, function calls, reasoning, running
out of tokens and failing mid-stream."""

from __future__ import annotations

from typing import Any

from gateway.errors import WorkerFailed
from gateway.responses.format import ResponseBuilder, usage
from shared.protocol import Delta, Done

ECHO = {"model": "m", "tools": []}
CALL = {"index": 0, "id": "call_1", "name": "get_time", "arguments": "{}"}


def d(text: str = "", calls: list[dict[str, Any]] | None = None, logprobs: list[Any] | None = None) -> Delta:
    return Delta("r", text, 1, logprobs, calls)


def done(reason: str = "stop", **use: int) -> Done:
    return Done("r", reason, usage={"prompt_tokens": 10, "completion_tokens": 3, "cached_tokens": 4, **use})


def run(b: ResponseBuilder, *events: Delta | Done) -> list[dict[str, Any]]:
    out = b.start()
    for ev in events:
        out += b.delta(ev) if isinstance(ev, Delta) else b.done(ev)
    return out


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_text_events_in_order_and_the_response_they_make() -> None:
    b = ResponseBuilder(ECHO)
    events = run(b, d("Hel"), d("lo"), done())
    assert types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["output"] == [] and events[0]["response"]["status"] == "in_progress"
    assert events[2]["item"]["content"] == [] and events[2]["item"]["status"] == "in_progress"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Hello"
    assert events[6]["text"] == "Hello"
    final = events[-1]["response"]
    assert final == b.response()
    assert final["status"] == "completed" and final["incomplete_details"] is None and final["error"] is None
    (msg,) = final["output"]
    assert msg["type"] == "message" and msg["role"] == "assistant" and msg["status"] == "completed"
    assert msg["content"] == [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}]
    assert final["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 13,
    }
    assert b.output_text() == "Hello"
    assert final["model"] == "m"  # the echo is part of it


def test_running_out_of_tokens_is_incomplete() -> None:
    b = ResponseBuilder(ECHO)
    events = run(b, d("abc"), done("length"))
    assert events[-1]["type"] == "response.incomplete"
    final = b.response()
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"


def test_a_function_call_after_text() -> None:
    b = ResponseBuilder(ECHO)
    events = run(b, d("Let me look."), d(calls=[CALL]), done("tool_calls"))
    assert types(events)[7:] == [
        "response.output_item.done",  # the message closes before the call opens
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[8]
    assert added["output_index"] == 1 and added["item"]["arguments"] == "" and added["item"]["status"] == "in_progress"
    assert events[10]["arguments"] == "{}" and events[10]["name"] == "get_time"
    msg, call = b.response()["output"]
    assert msg["content"][0]["text"] == "Let me look."
    assert {k: call[k] for k in ("type", "call_id", "name", "arguments", "status")} == {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_time",
        "arguments": "{}",
        "status": "completed",
    }
    assert call["id"].startswith("fc_") and msg["id"].startswith("msg_")
    assert b.response()["status"] == "completed"


def test_whitespace_before_a_call_is_dropped_and_only_whitespace_is_kept() -> None:
    b = ResponseBuilder(ECHO)
    run(b, d("\n\n"), d(calls=[CALL]), done("tool_calls"))
    assert [item["type"] for item in b.response()["output"]] == ["function_call"]
    b = ResponseBuilder(ECHO)
    events = run(b, d("\n"), d(" "), done())
    assert b.output_text() == "\n "
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["\n "]
    b = ResponseBuilder(ECHO)
    run(b, d("\n"), d("x"), done())
    assert b.output_text() == "\nx"


def test_no_output_at_all_is_one_empty_message() -> None:
    b = ResponseBuilder(ECHO)
    events = run(b, done())
    assert types(events)[2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert b.output_text() == ""


def test_namespaced_calls_come_back_apart() -> None:
    b = ResponseBuilder(ECHO, namespaces=frozenset({"agents"}))
    call = {**CALL, "name": "agents.spawn"}
    plain = {**CALL, "id": "call_2", "name": "other.thing"}
    run(b, d(calls=[call, plain]), done("tool_calls"))
    first, second = b.response()["output"]
    assert (first["namespace"], first["name"]) == ("agents", "spawn")
    assert second["name"] == "other.thing" and "namespace" not in second


def test_logprobs_ride_on_the_text_when_asked() -> None:
    entry = {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}
    b = ResponseBuilder(ECHO, logprobs=True)
    events = run(b, d("a", logprobs=[entry]), done())
    (delta,) = [e for e in events if e["type"] == "response.output_text.delta"]
    assert delta["logprobs"] == [entry]
    assert b.response()["output"][0]["content"][0]["logprobs"] == [entry]
    b = ResponseBuilder(ECHO)  # not asked: none, even if the worker sent them
    run(b, d("a", logprobs=[entry]), done())
    assert b.response()["output"][0]["content"][0]["logprobs"] == []


def test_a_failure_mid_stream_is_an_error_then_response_failed() -> None:
    b = ResponseBuilder(ECHO)
    events = run(b, d("partial"))
    events += b.fail(WorkerFailed("the worker died", code="worker_died"))
    assert types(events)[-2:] == ["error", "response.failed"]
    assert events[-2]["code"] == "worker_died" and events[-2]["message"] == "the worker died"
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "worker_died", "message": "the worker died"}
    assert failed["output"][0]["status"] == "incomplete"
    assert failed["output"][0]["content"][0]["text"] == "partial"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_reasoning_text_is_its_own_item_before_the_answer() -> None:
    b = ResponseBuilder(ECHO)
    events = b.start()
    events += b.delta(Delta("r", "", 1, reasoning="think "))
    events += b.delta(Delta("r", "", 2, reasoning="more"))
    events += b.delta(d("Answer"))
    events += b.done(done(reasoning_tokens=2))
    assert types(events)[2:9] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    reasoning, msg = b.response()["output"]
    assert reasoning["type"] == "reasoning" and reasoning["content"] == [
        {"type": "reasoning_text", "text": "think more"}
    ]
    assert msg["content"][0]["text"] == "Answer"
    assert b.response()["usage"]["output_tokens_details"]["reasoning_tokens"] == 2


def test_usage_of_a_loop_guard_stop() -> None:
    u = usage(
        Done("r", "loop", usage={"prompt_tokens": 1, "completion_tokens": 9, "loop_cycle_tokens": 3, "loop_repeats": 3})
    )
    assert u["loop_guard"] == {"cycle_tokens": 3, "repeats": 3}


def test_the_stream_format_writes_named_events_and_hands_over_the_whole_response() -> None:
    from gateway.responses.format import ResponsesStream

    kept: list[dict[str, Any]] = []
    fmt = ResponsesStream(ResponseBuilder(ECHO), {"x-a": "1"}, finished=lambda b: kept.append(b.response()))
    assert fmt.media_type == "text/event-stream" and fmt.headers == {"cache-control": "no-cache", "x-a": "1"}
    opening = fmt.opening("rid")
    assert opening[0].startswith(b"event: response.created\ndata: {") and opening[0].endswith(b"\n\n")
    assert fmt.event(None, d("hi")) and not kept
    frames = fmt.event(None, done())
    assert frames[-1].startswith(b"event: response.completed\n")
    assert [k["status"] for k in kept] == ["completed"]
    assert fmt.closing() == [] and fmt.keepalive().startswith(b":")
    failing = ResponsesStream(ResponseBuilder(ECHO), finished=lambda b: kept.append(b.response()))
    failing.opening()
    blob = failing.failure(WorkerFailed("gone"))
    assert blob.startswith(b"event: error\n") and b"event: response.failed\n" in blob
    assert kept[-1]["status"] == "failed"
