"""Ollama's API end to end with the official ``ollama`` Python client: SmolLM2 for real output,
all-MiniLM-L6-v2 for embeddings, the tiny tool-template model for tools, loading and unloading;
the Copilot-style discovery sequence; Ollama's error shape; the second (``ollama_port``) listener."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import pytest

from shared.config import default_model_path
from tests.servers import TOOLS, Gateway, free_port, serving
from tests.tinymodel import CALL_TEXT, THOUGHT, build_tiny_model

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]
GREEDY = {"temperature": 0, "num_predict": 16}


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-tools"), tools=True)


@pytest.fixture(scope="module")
def think_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-think"), think=True)


@pytest.fixture(scope="module")
def ollama_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def gw(
    tool_model: Path, think_model: Path, ollama_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(think_model / "tokenizer.json"))
    forced = {t: {"temperature": 0, "logit_bias": {str(tok.token_to_id(t)): 100}} for t in (THOUGHT, CALL_TEXT)}
    models = [
        {"name": "smol", "path": default_model_path(), "defaults": {"top_k": 40}},
        {"name": "minilm", "kind": "embedding"},
        {"name": "tools", "path": str(tool_model), "preload": False},
        # the reasoning variant, forced to write THOUGHT (or a whole tool call) over and over
        {"name": "think", "path": str(think_model), "defaults": forced[THOUGHT], "images": "placeholder"},
        {"name": "think-call", "path": str(think_model), "defaults": forced[CALL_TEXT], "preload": False},
    ]
    # resume_attempts = 0: a worker dying mid-stream ends the NDJSON with an error line (tested below)
    server = {"ollama": True, "ollama_port": ollama_port, "resume_attempts": 0}
    with serving(tmp_path_factory.mktemp("gw-ollama"), models, server) as g:
        yield g


@pytest.fixture(scope="module")
def client(gw: Gateway) -> ollama.Client:
    return ollama.Client(host=gw.url, timeout=120)


def test_root_and_version_answer_as_ollama_does(gw: Gateway, ollama_port: int) -> None:
    for url in (gw.url, f"http://127.0.0.1:{ollama_port}"):
        r = httpx.get(url + "/")
        assert r.status_code == 200 and r.text == "Ollama is running"
        assert httpx.head(url + "/").status_code == 200
        assert httpx.get(url + "/api/version").json()["version"].count(".") == 2


def test_second_listener_serves_the_same_app(gw: Gateway, ollama_port: int) -> None:
    other = ollama.Client(host=f"http://127.0.0.1:{ollama_port}")
    assert {m.model for m in other.list().models} == {
        "smol:latest",
        "minilm:latest",
        "tools:latest",
        "think:latest",
        "think-call:latest",
    }
    assert httpx.get(f"http://127.0.0.1:{ollama_port}/v1/models").status_code == 200


def test_list_names_every_configured_model_with_details(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert set(models) == {"smol:latest", "minilm:latest", "tools:latest", "think:latest", "think-call:latest"}
    smol = models["smol:latest"]
    assert smol.details is not None and smol.details.family == "llama" and smol.details.parameter_size == "135M"
    assert smol.size and smol.size > 50_000_000 and smol.digest and len(smol.digest) == 64
    assert models["minilm:latest"].details.family == "bert"  # type: ignore[union-attr]


def test_show_reports_capabilities_and_context(client: ollama.Client) -> None:
    smol = client.show("smol:latest")
    assert smol.capabilities == ["completion"]
    assert smol.modelinfo is not None and smol.modelinfo["llama.context_length"] == 8192
    assert "im_start" in (smol.template or "")
    assert "top_k" in (smol.parameters or "")
    assert client.show("minilm").capabilities == ["embedding"]
    assert "tools" in (client.show("tools").capabilities or [])
    with pytest.raises(ollama.ResponseError) as e:
        client.show("nope")
    assert e.value.status_code == 404 and "nope" in e.value.error


def test_ps_lists_the_loaded_models(client: ollama.Client) -> None:
    running = {m.model: m for m in client.ps().models}
    assert {"smol:latest", "minilm:latest"} <= set(running)
    assert "tools:latest" not in running  # on demand, not used yet
    assert running["smol:latest"].context_length == 8192 and (running["smol:latest"].size or 0) > 0
    assert running["smol:latest"].expires_at is not None


def test_chat_not_streamed(client: ollama.Client) -> None:
    r = client.chat(model="smol", messages=QUESTION, options=GREEDY, stream=False)
    assert "Paris" in r.message.content and r.message.role == "assistant"
    assert r.done and r.done_reason == "stop"
    assert r.prompt_eval_count and r.prompt_eval_count > 10 and r.eval_count and 0 < r.eval_count <= 16
    assert r.total_duration and r.eval_duration and r.prompt_eval_duration
    assert r.total_duration >= r.eval_duration + r.prompt_eval_duration


def test_chat_streamed_matches_the_whole_answer(client: ollama.Client) -> None:
    whole = client.chat(model="smol:latest", messages=QUESTION, options=GREEDY).message.content
    parts = list(client.chat(model="smol:latest", messages=QUESTION, options=GREEDY, stream=True))
    assert len(parts) > 2 and all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == whole
    assert parts[-1].eval_count and parts[-1].done_reason == "stop"


def test_generate_with_and_without_template(client: ollama.Client) -> None:
    r = client.generate(model="smol", prompt=QUESTION[0]["content"], options=GREEDY)
    assert "Paris" in r.response and r.done
    raw = "<|im_start|>user\nWhat is the capital of France? Answer briefly.<|im_end|>\n<|im_start|>assistant\n"
    r2 = client.generate(model="smol", prompt=raw, raw=True, options=GREEDY)
    assert "Paris" in r2.response
    assert (r2.prompt_eval_count or 0) < (r.prompt_eval_count or 0)  # no default system prompt added
    parts = list(client.generate(model="smol", prompt=QUESTION[0]["content"], options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == r.response


def test_options_reach_the_sampler(client: ollama.Client) -> None:
    short = client.generate(
        model="smol", prompt="Count from one to twenty.", options={"temperature": 0, "num_predict": 3}
    )
    assert short.eval_count == 3 and short.done_reason == "length"
    stopped = client.chat(model="smol", messages=QUESTION, options={**GREEDY, "stop": ["Paris"]})
    assert "Paris" not in stopped.message.content and stopped.done_reason == "stop"
    sampled = [
        client.generate(
            model="smol", prompt="Tell me a story.", options={"temperature": 1.0, "seed": 11, "num_predict": 12}
        )
        for _ in range(2)
    ]
    assert sampled[0].response == sampled[1].response


def test_format_constrains_the_output(client: ollama.Client) -> None:
    """``format``: "json" is one JSON object, a schema is held to (by the grammar), and a schema
    that can't be enforced is a 400 naming ``format``."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    r = client.chat(model="smol", messages=QUESTION, format=schema, options={"temperature": 0, "num_predict": 40})
    assert isinstance(json.loads(r.message.content)["city"], str) and r.done_reason == "stop"
    r = client.chat(model="smol", messages=QUESTION, format="json", options={"temperature": 0, "num_predict": 60})
    assert isinstance(json.loads(r.message.content), dict)
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="smol", messages=QUESTION, format={"type": "array", "uniqueItems": True})
    assert e.value.status_code == 400 and "format" in e.value.error and "uniqueItems" in e.value.error


def test_embed_and_the_older_embeddings(client: ollama.Client, gw: Gateway) -> None:
    r = client.embed(model="minilm", input=["The cat sits on the mat.", "Stock markets fell."])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 384 and r.prompt_eval_count
    openai_style = gw.http.post("/v1/embeddings", json={"model": "minilm", "input": "The cat sits on the mat."})
    assert np.allclose(r.embeddings[0], openai_style.json()["data"][0]["embedding"], atol=1e-6)
    old = client.embeddings(model="minilm:latest", prompt="The cat sits on the mat.")
    assert np.allclose(old.embedding, r.embeddings[0], atol=1e-6)
    long = "word " * 400
    assert len(client.embed(model="minilm", input=long).embeddings[0]) == 384  # truncate defaults to true
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="minilm", input=long, truncate=False)
    assert e.value.status_code == 400 and "256" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="minilm", input="x", dimensions=12)
    assert e.value.status_code == 400 and "384" in e.value.error


def test_kinds_do_not_mix(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="smol", input="x")
    assert e.value.status_code == 400 and "embeddings" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="minilm", messages=QUESTION)
    assert e.value.status_code == 400 and "embedding model" in e.value.error


def test_think_splits_the_reasoning_into_thinking(client: ollama.Client) -> None:
    assert "thinking" in (client.show("think").capabilities or [])
    on = client.chat(model="think", messages=QUESTION, think=True, options={"num_predict": 3})
    assert on.message.thinking == THOUGHT * 3 and on.message.content == "" and on.done_reason == "length"
    off = client.chat(model="think", messages=QUESTION, think=False, options={"num_predict": 3})
    assert off.message.content == THOUGHT * 3 and not off.message.thinking
    assert (off.prompt_eval_count or 0) == (on.prompt_eval_count or 0) + 1  # the template's <think></think>
    parts = list(client.chat(model="think", messages=QUESTION, think=True, options={"num_predict": 3}, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == THOUGHT * 3
    assert "".join(p.message.content or "" for p in parts) == ""
    gen = client.generate(model="think", prompt="hi", think=True, options={"num_predict": 2})
    assert gen.thinking == THOUGHT * 2 and gen.response == ""


def test_a_tool_call_comes_back_in_ollamas_shape(client: ollama.Client) -> None:
    time_tool = {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    }
    r = client.chat(model="think-call", messages=QUESTION, tools=[time_tool], think=False, options={"num_predict": 2})
    assert r.message.tool_calls and [c.function.name for c in r.message.tool_calls] == ["get_time", "get_time"]
    assert r.message.tool_calls[0].function.arguments == {} and r.message.content == ""
    assert r.done_reason == "length"  # it writes one whole call per token, on and on
    parts = list(
        client.chat(
            model="think-call",
            messages=QUESTION,
            tools=[time_tool],
            think=False,
            options={"num_predict": 1},
            stream=True,
        )
    )
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_time"] and parts[-1].done


def test_images_follow_the_models_policy(gw: Gateway) -> None:
    image = {"role": "user", "content": "What is in it?", "images": ["aGk="]}
    r = gw.http.post(
        "/api/chat",
        json={"model": "think", "messages": [image], "stream": False, "think": False, "options": {"num_predict": 1}},
    )
    assert r.status_code == 200, r.text
    assert "replaced by a text note" in r.headers["hearth-warning"]
    plain = gw.http.post(
        "/api/chat",
        json={
            "model": "think",
            "messages": [{**image, "images": []}],
            "stream": False,
            "think": False,
            "options": {"num_predict": 1},
        },
    )
    assert r.json()["prompt_eval_count"] > plain.json()["prompt_eval_count"]  # the note is in the prompt
    refused = gw.http.post("/api/chat", json={"model": "smol", "messages": [image]})
    assert refused.status_code == 400 and "images" in refused.json()["error"]


def test_registry_operations_are_refused_clearly(client: ollama.Client, gw: Gateway) -> None:
    for call in (
        lambda: client.pull("llama3.2"),
        lambda: client.push("smol"),
        lambda: client.create(model="mine", from_="smol"),
        lambda: client.copy("smol", "smol-copy"),
        lambda: client.delete("smol"),
    ):
        with pytest.raises(ollama.ResponseError) as e:
            call()
        assert e.value.status_code == 403 and "configured" in e.value.error
    assert gw.http.head("/api/blobs/sha256:" + "0" * 64).status_code == 404


def test_unknown_model_is_a_404_in_ollamas_shape(gw: Gateway) -> None:
    r = gw.http.post("/api/chat", json={"model": "llama3.2", "messages": QUESTION})
    assert r.status_code == 404 and set(r.json()) == {"error"} and "llama3.2" in r.json()["error"]


def test_copilot_style_discovery_then_chat(gw: Gateway) -> None:
    """VS Code Copilot Chat's Ollama provider: version, tags, show per model, then a streamed chat."""
    assert gw.http.get("/api/version").status_code == 200
    names = [m["name"] for m in gw.http.get("/api/tags").json()["models"]]
    shows = {n: gw.http.post("/api/show", json={"model": n}).json() for n in names}
    chat_models = [n for n, s in shows.items() if "completion" in s["capabilities"]]
    assert "smol:latest" in chat_models and "minilm:latest" not in chat_models
    arch = shows["smol:latest"]["model_info"]["general.architecture"]
    assert shows["smol:latest"]["model_info"][f"{arch}.context_length"] == 8192
    body = {"model": "smol:latest", "messages": QUESTION, "options": GREEDY}
    with gw.http.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] and "Paris" in "".join(x["message"]["content"] for x in lines)


def test_empty_chat_loads_and_keep_alive_zero_unloads(client: ollama.Client) -> None:
    loaded = client.chat(model="tools", messages=[])
    assert loaded.done and loaded.done_reason == "load"
    assert "tools:latest" in {m.model for m in client.ps().models}
    gone = client.generate(model="tools", prompt="", keep_alive=0)
    assert gone.done_reason == "unload"
    assert "tools:latest" not in {m.model for m in client.ps().models}


def test_tools_and_tool_history_reach_the_prompt(client: ollama.Client, tool_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tool_model))
    question = [{"role": "user", "content": "What is the weather in Köln?"}]
    history = [
        *question,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Köln"}}}],
        },
        {"role": "tool", "tool_name": "get_weather", "content": "sunny, 21 °C"},
    ]
    for messages in (question, history):
        r = client.chat(model="tools", messages=messages, tools=TOOLS, options={"num_predict": 1, "temperature": 0})
        hf = [dict(m) for m in messages]
        for m in hf:
            for c in m.get("tool_calls") or []:
                c.setdefault("type", "function")
        expected = tok.apply_chat_template(
            hf, tools=TOOLS, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert r.prompt_eval_count == len(expected)


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/api/chat", {"messages": QUESTION}, "model"),
        ("/api/chat", {"model": "smol", "messages": [{"role": "robot", "content": "x"}]}, "role"),
        ("/api/chat", {"model": "smol", "messages": QUESTION, "think": True}, "think"),
        ("/api/chat", {"model": "smol", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "images"),
        ("/api/generate", {"model": "think", "prompt": "x", "raw": True, "think": True}, "think"),
        ("/api/chat", {"model": "smol", "messages": QUESTION, "options": {"mirostat": 1}}, "mirostat"),
        ("/api/chat", {"model": "smol", "messages": QUESTION, "options": {"num_thread": 2}}, "num_thread"),
        ("/api/chat", {"model": "smol", "messages": QUESTION, "options": {"num_ctx": 100000}}, "num_ctx"),
        ("/api/chat", {"model": "smol", "messages": QUESTION, "options": {"temperature": "hot"}}, "temperature"),
        ("/api/chat", {"model": "smol", "messages": QUESTION, "keep_alive": "soon"}, "keep_alive"),
        ("/api/chat", {"model": "smol", "messages": QUESTION, "stream": "yes"}, "stream"),
        ("/api/generate", {"model": "smol", "prompt": "x", "suffix": "y"}, "suffix"),
        ("/api/generate", {"model": "smol", "prompt": "x", "context": [1, 2]}, "context"),
        ("/api/generate", {"model": "smol", "prompt": "x", "images": ["aGk="]}, "images"),
        ("/api/generate", {"model": "smol", "prompt": "x", "template": "{{ .Prompt }}"}, "template"),
        ("/api/generate", {"model": "smol", "prompt": 5}, "prompt"),
        ("/api/embed", {"model": "minilm"}, "input"),
        ("/api/embed", {"model": "minilm", "input": "x", "options": {"temperature": 0}}, "temperature"),
        ("/api/embeddings", {"model": "minilm"}, "prompt"),
        ("/api/show", {}, "model"),
    ],
)
def test_bad_bodies_are_400s_in_ollamas_shape(gw: Gateway, path: str, body: dict[str, Any], words: str) -> None:
    r = gw.http.post(path, content=json.dumps(body))  # as curl -d sends it: no JSON content type
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"]


def test_keep_alive_sets_when_the_model_unloads(client: ollama.Client) -> None:
    import datetime

    client.embed(model="minilm", input="x", keep_alive="1h")
    (entry,) = [m for m in client.ps().models if m.model == "minilm:latest"]
    assert entry.expires_at is not None
    left = (entry.expires_at - datetime.datetime.now(datetime.UTC)).total_seconds()
    assert 3500 < left <= 3600
    client.embed(model="minilm", input="x")  # back to the configured keep_alive: preloaded, never
    (entry,) = [m for m in client.ps().models if m.model == "minilm:latest"]
    assert entry.expires_at is not None and entry.expires_at.year == 9999


def test_a_worker_dying_mid_stream_ends_it_with_an_error_line(gw: Gateway) -> None:
    """Last in the module: it kills SmolLM2's worker (the supervisor restarts it)."""
    import os
    import signal

    (worker,) = gw.workers("smol")
    body = {
        "model": "smol",
        "messages": [{"role": "user", "content": "Write a long story."}],
        "options": {"num_predict": 500},
    }
    with gw.http.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = json.loads(next(lines))
        assert first["done"] is False
        os.kill(worker["pid"], signal.SIGKILL)
        rest = [json.loads(line) for line in lines if line]
    assert "error" in rest[-1] and "died" in rest[-1]["error"]
    assert not any(x.get("done") for x in rest)


def test_serve_flag_turns_the_ollama_api_on(tiny_model: Path, tmp_path: Path) -> None:
    gw = Gateway(["--model", str(tiny_model), "--name", "tiny", "--ollama"], tmp_path / "gateway.log")
    try:
        gw.wait_ready()
        assert gw.http.get("/").text == "Ollama is running"
        assert [m["name"] for m in gw.http.get("/api/tags").json()["models"]] == ["tiny:latest"]
        r = gw.http.post(
            "/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
        )
        assert r.status_code == 200 and r.json()["eval_count"] == 2 and r.json()["done_reason"] == "length"
    finally:
        gw.stop()
