"""The embed request path, shared by OpenAI's ``/v1/embeddings`` and Ollama's ``/api/embed``:
submit one ``Embed`` to the engine client, wait for its ``Embeddings`` while watching the client
(one that hangs up cancels the request), and leave the formatting to the API.

Embeddings are not generations (no deltas, no streaming, no keep-alive pings), so they do not go
through the generation session; admission, dispatch, re-dispatch and residency are the engine
client's, as for generations.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.client import EngineClient
from gateway.disconnect import GONE, unless_gone
from shared.protocol import Embeddings


async def embed(
    request: Request,
    client: EngineClient,
    model: str,
    inputs: list[Any],
    params: dict[str, Any],
    keep_alive: float | str | None = None,
) -> Embeddings | None:
    """The vectors of ``inputs`` (texts or token id lists) from the embedding model ``model``;
    None when the client hung up first. Errors are ``HearthError``s (400 for a chat model, an
    input over the model's limit, or ``dimensions`` it can't make)."""
    cfg = client.config.model(model)
    request.scope.setdefault("state", {})["model"] = cfg.name if cfg else "unknown"

    async def run() -> Embeddings:
        rs = await client.submit_embed(model, inputs, params, keep_alive)
        try:
            return await rs.embeddings()
        finally:
            rs.close()

    out = await unless_gone(request, run())
    return None if out is GONE else out
