"""The embed / embeddings messages on the wire: what the codec refuses as garbage."""

from __future__ import annotations

import pytest

from shared.codec import ProtocolError, decode


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (b"embed", b'{"id": "e", "model": "m"}'),  # no inputs
        (b"embed", b'{"id": "e", "model": "m", "inputs": "text"}'),  # not a list
        (b"embed", b'{"id": "e", "model": "m", "inputs": [1, 2]}'),  # an input that is a bare number
        (b"embed", b'{"id": "e", "model": "m", "inputs": [[1, "2"]]}'),  # a token id that is a string
        (b"embed", b'{"id": "e", "model": "m", "inputs": [[true]]}'),  # a token id that is a bool
        (b"embeddings", b'{"id": "e", "vectors": [[0.1, "x"]]}'),
        (b"embeddings", b'{"id": "e", "vectors": [0.1, 0.2]}'),  # not a list of vectors
        (b"embeddings", b'{"id": "e", "vectors": [[0.1]], "usage": {"prompt_tokens": "5"}}'),
        (b"embeddings", b'{"id": "e", "vectors": [[false]]}'),
    ],
)
def test_malformed_embed_messages_raise_protocol_error(kind: bytes, payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(kind, payload)


def test_params_default_to_empty_and_usage_to_nothing() -> None:
    msg = decode(b"embed", b'{"id": "e", "model": "m", "inputs": ["a", [1, 2]]}')
    assert msg.params == {} and msg.inputs == ["a", [1, 2]]  # type: ignore[union-attr]
    out = decode(b"embeddings", b'{"id": "e", "vectors": [[1, 0.5]]}')
    assert out.usage == {} and out.vectors == [[1, 0.5]]  # type: ignore[union-attr]
