"""Ollama request translation and response formatting (pure): names, options, inputs, chunks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.bodies import validate
from gateway.errors import InvalidRequest
from gateway.ollama import catalog, translate
from gateway.ollama.facts import facts
from gateway.ollama.schemas import ChatRequest, EmbedRequest, GenerateRequest, ShowRequest
from gateway.ollama.format import Shape
from gateway.ollama.translate import chat_input, generate_input, params_for, resolve_name
from shared.config import ModelConfig, ServerConfig, default_model, make_config
from shared.protocol import Delta, Done

CFG = ModelConfig(name="smol", path="/nowhere", defaults={"repetition_penalty": 1.05, "temperature": 0.7})


def chat_req(**extra: Any) -> ChatRequest:
    return validate(ChatRequest, {"model": "smol", "messages": [{"role": "user", "content": "hi"}], **extra})


def test_names_resolve_with_and_without_latest() -> None:
    config = make_config(ServerConfig(), [CFG, ModelConfig(name="qwen:7b", path="/x", aliases=["gpt-*"])])
    assert resolve_name(config, "smol") is CFG and resolve_name(config, "smol:latest") is CFG
    assert resolve_name(config, "qwen:7b").name == "qwen:7b"  # type: ignore[union-attr]
    assert resolve_name(config, "gpt-4o:latest").name == "qwen:7b"  # type: ignore[union-attr]
    assert resolve_name(config, "nope:latest") is None and resolve_name(config, "smol:7b") is None
    assert translate.listed_name("smol") == "smol:latest" and translate.listed_name("qwen:7b") == "qwen:7b"


def test_options_map_onto_hearth_params_over_the_model_defaults() -> None:
    options = {
        "num_predict": 20,
        "temperature": 0,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "seed": 7,
        "stop": ["a", "b", "c", "d", "e"],
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "repeat_penalty": 1.2,
        "repeat_last_n": 32,
        "num_ctx": 4096,
        "mirostat": 0,
        "typical_p": 1.0,
        "tfs_z": 1,
        "penalize_newline": False,
    }
    params = params_for(chat_req(options=options), CFG, 8192)
    assert params == {
        "max_tokens": 20,
        "temperature": 0,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "seed": 7,
        "stop": ["a", "b", "c", "d", "e"],
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "repetition_penalty": 1.2,
        "repetition_context_size": 32,
    }


def test_num_predict_minus_one_lifts_a_default_cap_and_repeat_last_n_zero_turns_penalties_off() -> None:
    cfg = ModelConfig(name="smol", path="/x", defaults={"max_tokens": 50, "repetition_penalty": 1.1})
    assert "max_tokens" not in params_for(chat_req(options={"num_predict": -1}), cfg, 8192)
    seeded = ModelConfig(name="smol", path="/x", defaults={"seed": 3})
    assert "seed" not in params_for(chat_req(options={"seed": -1}), seeded, 8192)  # -1: random
    off = params_for(chat_req(options={"repeat_last_n": 0, "presence_penalty": 1.0}), cfg, 8192)
    assert "repetition_penalty" not in off and "presence_penalty" not in off
    whole = params_for(chat_req(options={"repeat_last_n": -1, "num_ctx": 1000}), cfg, 8192)
    assert whole["repetition_context_size"] == 1000


def test_num_ctx_over_the_models_context_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as e:
        params_for(chat_req(options={"num_ctx": 8193}), CFG, 8192)
    assert e.value.param == "options.num_ctx" and "8192" in e.value.message


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"mirostat": 2}, "mirostat"),
        ({"typical_p": 0.5}, "typical_p"),
        ({"penalize_newline": True}, "penalize_newline"),
        ({"num_thread": 4}, "num_thread"),
        ({"num_gpu": 1}, "num_gpu"),
        ({"num_keep": 5}, "num_keep"),
        ({"fancy": 1}, "fancy"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "0"}, "temperature"),
        ({"num_predict": 0}, "num_predict"),
        ({"num_predict": -3}, "num_predict"),
        ({"top_p": 1.5}, "top_p"),
        ({"repeat_penalty": 0}, "repeat_penalty"),
        ({"stop": "x"}, "stop"),
        ({"repeat_last_n": -2}, "repeat_last_n"),
    ],
)
def test_options_hearth_cannot_honour_are_refused_by_name(options: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        params_for(chat_req(options=options), CFG, 8192)
    assert words in e.value.message


def check(req: Any, images: int = 0, policy: str = "reject", thinks: bool = False) -> None:
    translate.check_request(req, CFG, images, policy, thinks)


def test_format_passes_and_a_schema_that_cannot_be_enforced_is_refused_naming_format() -> None:
    check(chat_req(format="json"))
    check(chat_req(format=""))  # "" means no format
    check(chat_req(format={"type": "object", "properties": {"age": {"type": "integer"}}}))
    with pytest.raises(InvalidRequest) as e:
        check(chat_req(format={"type": "array", "uniqueItems": True}))
    assert e.value.param == "format" and "uniqueItems" in e.value.message


def test_format_becomes_response_format_once_workers_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import protocol

    monkeypatch.setattr(protocol, "OUTPUT_PARAMS", ("response_format",), raising=False)
    check(chat_req(format="json"))
    assert params_for(chat_req(format="json"), CFG, 0)["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    assert params_for(chat_req(format=schema), CFG, 0)["response_format"] == {"type": "json_schema", "schema": schema}


@pytest.mark.parametrize("think", [True, "high"])
def test_think_is_refused_for_models_that_do_not_think(think: Any) -> None:
    with pytest.raises(InvalidRequest) as e:
        check(chat_req(think=think), thinks=False)
    assert e.value.param == "think"
    check(chat_req(think=False), thinks=False)
    check(chat_req(), thinks=False)


@pytest.mark.parametrize(
    ("think", "switches"),
    [
        (True, {"enable_thinking": True}),
        (False, {"enable_thinking": False}),
        ("low", {"enable_thinking": True, "reasoning_effort": "low"}),
        (None, {}),
    ],
)
def test_think_becomes_the_templates_switches(think: Any, switches: dict[str, Any]) -> None:
    req = chat_req(think=think)
    check(req, thinks=True)
    inp = chat_input(req)
    assert {k: v for k, v in inp.items() if k in ("enable_thinking", "reasoning_effort")} == switches
    assert {k: v for k, v in generate_input(gen_req(prompt="x", think=think)).items() if k != "messages"} == switches
    with pytest.raises(InvalidRequest):
        check(gen_req(prompt="x", raw=True, think=think if think is not None else True), thinks=True)


def test_earlier_thinking_goes_back_as_reasoning_content() -> None:
    req = chat_req(
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "thinking": "hm"}]
    )
    assert chat_input(req)["messages"][1] == {"role": "assistant", "content": "yo", "reasoning_content": "hm"}


def test_images_follow_the_models_image_policy() -> None:
    with pytest.raises(InvalidRequest) as e:
        check(chat_req(), images=1, policy="reject")
    assert e.value.param == "images" and "text only" in e.value.message
    check(chat_req(), images=1, policy="placeholder")
    req = chat_req(messages=[{"role": "user", "content": "what is this?", "images": ["aGk=", "aGk="]}])
    content = chat_input(req)["messages"][0]["content"]
    assert content.startswith("what is this?\n[image omitted") and content.count("[image omitted") == 2
    gen = generate_input(gen_req(prompt="see", images=["aGk="]))
    assert gen["messages"][-1]["content"].startswith("see\n[image omitted")
    with pytest.raises(InvalidRequest) as e:
        generate_input(gen_req(prompt="see", images=["aGk="], raw=True))
    assert e.value.param == "images"


def test_logprobs_ask_the_worker_for_top_logprobs() -> None:
    assert params_for(chat_req(logprobs=True, top_logprobs=3), CFG, 0)["logprobs"] == 3
    assert params_for(chat_req(logprobs=True), CFG, 0)["logprobs"] == 0
    assert "logprobs" not in params_for(chat_req(), CFG, 0)


def test_chat_input_gives_tool_calls_ids_and_tool_results_their_call() -> None:
    req = validate(
        ChatRequest,
        {
            "model": "smol",
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Köln"}}}],
                },
                {"role": "tool", "tool_name": "get_weather", "content": "sunny"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        },
    )
    inp = chat_input(req)
    call = inp["messages"][1]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Köln"}
    assert inp["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": call["id"]}
    assert inp["tools"][0]["function"]["name"] == "get_weather"


def gen_req(**body: Any) -> GenerateRequest:
    return validate(GenerateRequest, {"model": "smol", **body})


def test_generate_input_templates_unless_raw() -> None:
    assert generate_input(gen_req(prompt="hi")) == {"messages": [{"role": "user", "content": "hi"}]}
    assert generate_input(gen_req(prompt="hi", system="be brief"))["messages"][0] == {
        "role": "system",
        "content": "be brief",
    }
    assert generate_input(gen_req(prompt="<|im_start|>user\nhi", raw=True)) == {"prompt": "<|im_start|>user\nhi"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "context": [1, 2, 3]}, "context"),
        ({"prompt": "x", "template": "{{ .Prompt }}"}, "template"),
        ({"prompt": "x", "raw": True, "system": "s"}, "system"),
    ],
)
def test_generate_fields_hearth_cannot_honour_are_refused(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        generate_input(gen_req(**body))
    assert e.value.param == param and param in e.value.message


def test_chunks_and_final_object_in_ollamas_shape() -> None:
    shape = Shape("smol:latest", chat=True, t0=0.0)
    calls = [{"index": 0, "id": "call_1", "name": "get_weather", "arguments": '{"city": "Köln"}'}]
    chunk = shape.chunk(Delta("r", "Hi", 1, tool_calls=calls), want_logprobs=False)
    assert chunk["done"] is False and chunk["model"] == "smol:latest"
    assert chunk["message"] == {
        "role": "assistant",
        "content": "Hi",
        "tool_calls": [
            {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Köln"}}}
        ],
    }
    assert chunk["created_at"].endswith("Z")
    done = Done(
        "r",
        "tool_calls",
        usage={"prompt_tokens": 12, "completion_tokens": 5},
        timings={"ttft_s": 0.25, "total_s": 1.0},
    )
    final = Shape("smol", chat=False, t0=__import__("time").perf_counter() - 1.5).final(done, "text")
    assert final["response"] == "text" and final["done"] is True and final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 12 and final["eval_count"] == 5
    assert final["prompt_eval_duration"] == 250_000_000 and final["eval_duration"] == 750_000_000
    assert 1.5e9 <= final["total_duration"] < 2.5e9
    assert final["load_duration"] == pytest.approx(final["total_duration"] - 1e9, abs=1e6)
    assert Shape("m", chat=True, t0=0).status("load")["done_reason"] == "load"


def test_embed_and_show_bodies() -> None:
    assert validate(EmbedRequest, {"model": "m", "input": "x"}).truncate is True
    with pytest.raises(InvalidRequest):
        validate(EmbedRequest, {"model": "m", "input": []})
    assert validate(ShowRequest, {"name": "smol"}).model_name == "smol"
    with pytest.raises(InvalidRequest):
        validate(ShowRequest, {})


def test_facts_and_catalog_of_the_packaged_smollm2() -> None:
    cfg = default_model()
    f = facts(cfg)
    assert (f.format, f.family, f.context_length, f.embedding_length) == ("gguf", "llama", 8192, 576)
    assert f.parameter_size == "135M" and len(f.digest) == 64 and "im_start" in f.template
    shown = catalog.show(cfg, f, 8192)
    assert shown["capabilities"] == ["completion"]  # its template renders no tools
    assert shown["model_info"]["llama.context_length"] == 8192
    tools = ModelConfig(name="t", path=cfg.path, tool_parser="json_tools")
    assert catalog.capabilities(tools, f) == ["completion", "tools"]
    params = catalog.parameters(ModelConfig(name="p", path="/x", defaults={"repetition_penalty": 1.05, "stop": ["a"]}))
    assert params.split("\n") == [f"{'repeat_penalty':<30} 1.05", f"{'stop':<30} 'a'"]


def test_reasoning_goes_to_thinking_never_into_the_text() -> None:
    chat = Shape("m", chat=True, t0=0).chunk(Delta("r", "", 1, reasoning="Hm."), want_logprobs=False)
    assert chat["message"] == {"role": "assistant", "content": "", "thinking": "Hm."}
    gen = Shape("m", chat=False, t0=0).chunk(Delta("r", "ok", 2, reasoning="Hm."), want_logprobs=False)
    assert gen["response"] == "ok" and gen["thinking"] == "Hm."
    assert "thinking" not in Shape("m", chat=False, t0=0).chunk(Delta("r", "ok", 2), want_logprobs=False)
    final = Shape("m", chat=True, t0=0).final(Done("r", "length"), "text", None, None, "Hm.Hm.")
    assert final["message"] == {"role": "assistant", "content": "text", "thinking": "Hm.Hm."}


def test_thinking_capability_follows_the_template() -> None:
    f = facts(default_model())
    assert not catalog.thinks(f)
    import dataclasses

    think = dataclasses.replace(f, template="{% if enable_thinking %}<think>{% endif %}")
    assert catalog.thinks(think) and "thinking" in catalog.capabilities(default_model(), think)


def test_facts_of_unreadable_models_are_unknowns_not_errors(tmp_path: Any) -> None:
    missing = facts(ModelConfig(name="gone", path=str(tmp_path / "nowhere.gguf")))
    assert missing.family == "unknown" and missing.size == 0 and len(missing.digest) == 64
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert facts(ModelConfig(name="b", path=str(broken))).family == "unknown"
    bad_gguf = tmp_path / "bad.gguf"
    bad_gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 7)
    assert facts(ModelConfig(name="g", path=str(bad_gguf))).format == "unknown"
    assert catalog.tag(ModelConfig(name="gone", path="/x"), missing)["details"]["family"] == "unknown"


def test_ndjson_stream_lines_keepalives_and_failures_parse_as_ollama_chunks() -> None:
    from gateway.errors import WorkerFailed
    from gateway.ollama.format import NdjsonStream
    from gateway.session import Choice

    fmt = NdjsonStream(Shape("smol", chat=True, t0=0), want_logprobs=False)
    assert fmt.media_type == "application/x-ndjson" and fmt.opening("r") == [] and fmt.closing() == []
    tick = orjson.loads(fmt.keepalive())
    assert tick["done"] is False and tick["message"] == {"role": "assistant", "content": ""}
    assert fmt.keepalive().endswith(b"\n") and fmt.keepalive().count(b"\n") == 1
    choice = Choice(0, 0, {}, {})
    (line,) = fmt.event(choice, Delta("r", "Hi", 1))
    assert orjson.loads(line)["message"]["content"] == "Hi"
    (last,) = fmt.event(choice, Done("r", "stop", usage={"prompt_tokens": 3, "completion_tokens": 1}))
    assert orjson.loads(last)["done"] is True and orjson.loads(last)["eval_count"] == 1
    assert orjson.loads(fmt.failure(WorkerFailed("the model worker died"))) == {"error": "the model worker died"}
    gen = NdjsonStream(Shape("smol", chat=False, t0=0), want_logprobs=False)
    assert orjson.loads(gen.keepalive())["response"] == ""


def test_the_speculative_option_opts_out_of_speculative_decoding() -> None:
    assert params_for(chat_req(options={"speculative": False}), CFG, 8192)["speculative"] is False
    assert "speculative" not in params_for(chat_req(options={}), CFG, 8192)
