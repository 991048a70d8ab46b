"""Ollama request bodies (its docs/api.md is the contract), validated strictly at the edge.

Types are strict, unknown top-level fields are ignored (as Ollama does), and anything Hearth
can't honour is refused by name: every ``options`` key is either mapped onto Hearth's sampling
parameters or a 400, except the values that mean "off" (``mirostat: 0``, ``typical_p: 1``, ...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from gateway.bodies import KeepAlive
from gateway.openai.schemas import FunctionDef

Float = StrictFloat | StrictInt

# Options that Ollama documents and Hearth maps (Ollama name -> Hearth's Generate.params name).
MAPPED_OPTIONS = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repetition_penalty",
    "repeat_last_n": "repetition_context_size",
    "speculative": "speculative",  # Hearth's own: false opts out of speculative decoding
}
# Options whose value turns them off; that value is accepted (it asks for nothing), others refused.
OFF_VALUES: dict[str, Any] = {"mirostat": 0, "typical_p": 1.0, "tfs_z": 1.0, "penalize_newline": False}
# Load-time and hardware options: Hearth sets them per model in hearth.toml, never per request.
LOAD_OPTIONS = (
    "num_keep",
    "numa",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "low_vram",
    "f16_kv",
    "vocab_only",
    "use_mmap",
    "use_mlock",
    "num_thread",
    "logits_all",
    "embedding_only",
    "mirostat_tau",
    "mirostat_eta",
)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class Options(_Strict):
    """The ``options`` object. Unknown keys are refused (``_known``), not ignored."""

    model_config = ConfigDict(strict=True, extra="allow")

    num_predict: StrictInt | None = None
    num_ctx: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[StrictInt, Field(ge=0)] | None = None
    min_p: Annotated[Float, Field(ge=0, le=1)] | None = None
    seed: StrictInt | None = None
    stop: list[StrictStr] | None = None
    presence_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = None
    repeat_penalty: Annotated[Float, Field(gt=0, le=10)] | None = None
    repeat_last_n: Annotated[StrictInt, Field(ge=-1)] | None = None
    speculative: StrictBool | None = None

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key, value in data.items():
            if key in MAPPED_OPTIONS or key == "num_ctx" or value is None:
                continue
            if key in OFF_VALUES:
                off = OFF_VALUES[key]
                if value == off and isinstance(value, bool) == isinstance(off, bool):
                    continue
                raise ValueError(f"{key}: Hearth has no {key} sampling; leave it out (or {OFF_VALUES[key]!r}: off)")
            if key in LOAD_OPTIONS:
                raise ValueError(f"{key} is a load-time setting: Hearth sets it per model in hearth.toml")
            raise ValueError(f"unknown option {key!r}")
        return data

    @model_validator(mode="after")
    def _num_predict(self) -> Options:
        if self.num_predict is not None and (self.num_predict < -2 or self.num_predict == 0):
            raise ValueError("num_predict must be positive, -1 (no limit) or -2 (fill the context)")
        return self


class FunctionCallOut(_Strict):
    name: StrictStr
    arguments: dict[str, Any] = Field(default_factory=dict)
    index: StrictInt | None = None


class ToolCall(_Strict):
    """A tool call in an earlier assistant turn (Ollama's shape: arguments as an object)."""

    id: StrictStr | None = None
    type: Literal["function"] = "function"
    function: FunctionCallOut


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr = ""
    images: list[StrictStr] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: StrictStr | None = None
    tool_call_id: StrictStr | None = None  # accepted for OpenAI-minded clients
    thinking: StrictStr | None = None

    @model_validator(mode="after")
    def _tool_fields(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls belong to assistant messages only")
        return self


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDef


Format = Literal["", "json"] | dict[str, Any]
Think = StrictBool | Literal["high", "medium", "low"]


class GenerationRequest(_Strict):
    """The fields /api/chat and /api/generate share."""

    model: Annotated[StrictStr, Field(min_length=1)]
    format: Format | None = None
    options: Options | None = None
    stream: StrictBool = True
    keep_alive: KeepAlive | None = None
    think: Think | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None


class ChatRequest(GenerationRequest):
    messages: Annotated[list[Message], Field(max_length=100_000)] = Field(default_factory=list)
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None


class GenerateRequest(GenerationRequest):
    prompt: StrictStr = ""
    suffix: StrictStr | None = None
    images: list[StrictStr] | None = None
    system: StrictStr | None = None
    template: StrictStr | None = None
    raw: StrictBool = False
    context: list[StrictInt] | None = None


class EmbedRequest(_Strict):
    model: Annotated[StrictStr, Field(min_length=1)]
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=2048)]
    truncate: StrictBool = True
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    dimensions: Annotated[StrictInt, Field(ge=1)] | None = None


class EmbeddingsRequest(_Strict):
    """The older ``/api/embeddings``: one ``prompt``, one vector."""

    model: Annotated[StrictStr, Field(min_length=1)]
    prompt: StrictStr
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class ShowRequest(_Strict):
    model: StrictStr | None = None
    name: StrictStr | None = None  # the older spelling
    verbose: StrictBool = False

    @model_validator(mode="after")
    def _named(self) -> ShowRequest:
        if not (self.model or self.name):
            raise ValueError("model is required")
        return self

    @property
    def model_name(self) -> str:
        return self.model or self.name or ""
