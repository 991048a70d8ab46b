"""The official openai Python client against a real gateway: chat and completions, streaming
and not, and errors surfacing as the client's own exception types."""

from __future__ import annotations

import openai
import pytest

from tests.servers import Gateway


@pytest.fixture(scope="module")
def client(tiny_gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_gateway.url}/v1", api_key="unused", max_retries=0)


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=7, temperature=0
    )
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 7


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=9, temperature=0
    )
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=9,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == full.usage.total_tokens


def test_completions_both_ways(client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens == 6
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == r.choices[0].text


def test_errors_are_client_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], temperature=5)
    assert bad.value.param == "temperature"


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
