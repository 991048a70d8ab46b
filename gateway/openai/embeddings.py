"""OpenAI's ``POST /v1/embeddings``: schema, and the response in OpenAI's shape (``float``
lists or ``base64`` of little-endian float32, which the official SDK asks for by default)."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from starlette.requests import Request
from starlette.responses import Response

from gateway.bodies import KeepAlive, read_json, validate
from gateway.embeddings import embed
from gateway.session import Generations

MAX_INPUTS = 2048  # OpenAI's limit on the items of one request

TokenIds = list[Annotated[StrictInt, Field(ge=0)]]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: StrictStr
    input: StrictStr | list[StrictStr] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[StrictInt, Field(ge=1)] | None = None
    user: StrictStr | None = None  # OpenAI's end-user id for abuse monitoring: accepted, nothing to monitor
    keep_alive: KeepAlive | None = None  # Hearth's: how long the model stays loaded after this request

    @field_validator("input")
    @classmethod
    def _not_empty(
        cls, v: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        items = [v] if isinstance(v, str) else v
        if not items:
            raise ValueError("must not be empty")
        if len(items) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request")
        if any(isinstance(x, (str, list)) and not x for x in items):
            raise ValueError("an input must not be empty")
        return v

    def inputs(self) -> list[str | list[int]]:
        """Each input: a text, or a list of the model's token ids."""
        v = self.input
        if isinstance(v, str):
            return [v]
        if v and isinstance(v[0], int):
            return [list(v)]  # type: ignore[arg-type]
        return list(v)  # type: ignore[arg-type]


def _vector(v: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
    return v


async def create_embeddings(request: Request) -> Response:
    gens: Generations = request.app.state.generations
    req = validate(EmbeddingRequest, await read_json(request, gens.config.server.body_limit))
    params = {"dimensions": req.dimensions, "truncate": False}
    out = await embed(request, gens, req.model, req.inputs(), params, req.keep_alive)
    tokens = out.usage.get("prompt_tokens", 0)
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _vector(v, req.encoding_format)}
            for i, v in enumerate(out.vectors)
        ],
        "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Response(orjson.dumps(body), media_type="application/json")
