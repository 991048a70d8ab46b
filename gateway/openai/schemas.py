"""OpenAI request bodies, validated strictly at the edge so a worker never sees a bad request.

Types are strict (``"max_tokens": "5"`` is an error, not a 5), ranges follow OpenAI's, unknown
fields are ignored, and a parameter Hearth can't honour is refused by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway import media
from gateway.bodies import KeepAlive, check_unique_names
from shared.grammar import GrammarError, check_schema, check_tool_schema
from gateway.media import OPENAI_IMAGE_PARTS

MAX_INT = 2**31 - 1
MAX_N = 16  # choices per request (each is one sequence in the batch)
Float = StrictFloat | StrictInt
Prob = Annotated[Float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class JsonSchemaFormat(_Strict):
    """OpenAI's ``response_format.json_schema``. The output is always held to ``schema`` (by a
    grammar, whatever ``strict`` says); without a schema, to any JSON object."""

    name: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Strict):
    """``text`` (no constraint), ``json_object`` (any JSON object) or ``json_schema``; a schema
    the grammar compiler can't enforce is refused here, naming the keyword."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _compiles(self) -> ResponseFormat:
        if self.type == "json_schema":
            if self.json_schema is None:
                raise ValueError("type 'json_schema' needs json_schema: {name, schema, strict}")
            if self.json_schema.schema_ is not None:
                _check_schema(self.json_schema.schema_, "response_format")
        return self

    def wire(self) -> dict[str, Any] | None:
        """``Generate.params["response_format"]`` (None: unconstrained)."""
        schema = self.json_schema.schema_ if self.json_schema is not None else None
        if self.type == "json_schema" and schema is not None:
            return {"type": "json_schema", "schema": schema}
        if self.type == "text":
            return None
        return {"type": "json_object"}


def _check_schema(schema: dict[str, Any], param: str) -> None:
    try:
        check_schema(schema, param)
    except GrammarError as e:
        raise ValueError(e.detail) from None


class LoopGuard(_Strict):
    """Stop when the output repeats one verbatim cycle this many times (see worker/loops.py)."""

    repeats: Annotated[StrictInt, Field(ge=2, le=1000)] = 4
    max_cycle: Annotated[StrictInt, Field(ge=1, le=512)] = 64
    min_span: Annotated[StrictInt, Field(ge=1, le=100_000)] = 32


class FunctionCall(_Strict):
    name: StrictStr
    arguments: StrictStr  # JSON text, as OpenAI sends it back


class ToolCallIn(_Strict):
    """A tool call in an earlier assistant turn of the conversation."""

    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[dict[str, Any]] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant turns only
    tool_call_id: StrictStr | None = None  # tool results only
    reasoning_content: StrictStr | None = None  # an earlier assistant turn's reasoning, passed back

    @field_validator("content")
    @classmethod
    def _text_parts(cls, v: Any, info: ValidationInfo) -> Any:
        """Text parts; image and file parts only under the model's ``images = "placeholder"``
        (gateway.media), where each becomes a note."""
        if isinstance(v, list):
            for i, part in enumerate(v):
                kind = part.get("type")
                if kind in OPENAI_IMAGE_PARTS and media.allows(info.context):
                    continue
                if kind in (*OPENAI_IMAGE_PARTS, "input_audio"):
                    raise ValueError(
                        f"part {i} is {kind}: this model is text-only, send text parts"
                        + ("" if kind == "input_audio" else ' (or configure the model with images = "placeholder")')
                    )
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"part {i} must be {{'type': 'text', 'text': '...'}}")
        return v

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls belong to assistant messages only")
        if self.role == "tool":
            if self.tool_call_id is None:
                raise ValueError("a tool message needs tool_call_id: the id of the call it answers")
            if self.content is None:
                raise ValueError("a tool message needs content: the tool's result")
        elif self.tool_call_id is not None:
            raise ValueError("tool_call_id belongs to tool messages only")
        if self.reasoning_content is not None and self.role != "assistant":
            raise ValueError("reasoning_content belongs to assistant messages only")
        return self

    def text(self) -> str:
        """The content as one text; an image or file part (placeholder policy) becomes its note."""
        if isinstance(self.content, list):
            return "".join(p["text"] if p.get("type") == "text" else _part_note(p) for p in self.content)
        return self.content or ""

    def omitted(self) -> int:
        """How many image or file parts ``text`` replaced by a note."""
        if not isinstance(self.content, list):
            return 0
        return sum(1 for p in self.content if p.get("type") in OPENAI_IMAGE_PARTS)


def _part_note(part: dict[str, Any]) -> str:
    kind = OPENAI_IMAGE_PARTS[str(part.get("type"))]
    detail = part.get("file", {}).get("filename", "") if isinstance(part.get("file"), dict) else ""
    return media.note(kind, detail if isinstance(detail, str) else "")


FUNCTION_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class FunctionDef(_Strict):
    name: Annotated[StrictStr, Field(pattern=FUNCTION_NAME)]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema object: a call's arguments are held to it
    strict: StrictBool | None = None

    @field_validator("parameters")
    @classmethod
    def _compiles(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v:
            try:
                check_tool_schema(v, "parameters")
            except GrammarError as e:
                raise ValueError(e.detail) from None
        return v


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: StrictStr


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class SamplingFields(_Strict):
    """Parameters shared by chat and text completions."""

    model: StrictStr
    max_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_INT)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=2)] | None = None
    top_p: Prob | None = None
    top_k: Annotated[StrictInt, Field(ge=0, le=MAX_INT)] | None = None
    min_p: Prob | None = None
    seed: Annotated[StrictInt, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    presence_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[Float, Field(gt=0, le=10)] | None = None
    repetition_context_size: Annotated[StrictInt, Field(ge=1, le=MAX_INT)] | None = None
    logit_bias: dict[StrictStr, Annotated[Float, Field(ge=-100, le=100)]] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    loop_guard: StrictBool | LoopGuard | None = None
    # Hearth extension: false decodes this request without its model's speculative decoding
    speculative: StrictBool | None = None
    response_format: ResponseFormat | None = None
    # Hearth/Ollama extension: how long the model stays loaded once idle after this request
    keep_alive: KeepAlive | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key in v or {}:
            if not (key.isascii() and key.isdigit() and len(key) <= 10 and int(key) < MAX_INT):
                raise ValueError(f"keys must be token ids (integers from 0), got {key!r}")
        return v


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=100_000)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_INT)] | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    # "none": the chat template's thinking switch off (and no reasoning output); any other: on
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    functions: Any = None  # OpenAI's legacy function calling: refused with a pointer to tools
    function_call: Any = None

    @field_validator("tools")
    @classmethod
    def _unique_names(cls, v: list[Tool] | None) -> list[Tool] | None:
        check_unique_names([t.function.name for t in v or []])
        return v

    @field_validator("tool_choice")
    @classmethod
    def _choice_fits_tools(cls, v: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools") or []
        if isinstance(v, NamedToolChoice):
            if v.function.name not in {t.function.name for t in tools}:
                raise ValueError(f"the function '{v.function.name}' is not among the request's tools")
        elif v == "required" and not tools:
            raise ValueError("'required' needs tools in the request")
        return v

    @field_validator("functions", "function_call")
    @classmethod
    def _legacy(cls, v: Any, info: ValidationInfo) -> Any:
        if v is not None:
            new = "tools" if info.field_name == "functions" else "tool_choice"
            raise ValueError(f"the legacy {info.field_name} parameter is not supported; use {new}")
        return v

    @model_validator(mode="after")
    def _aliases(self) -> ChatCompletionRequest:
        if self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self


class CompletionRequest(SamplingFields):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=64)]
    logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    echo: Literal[False] = False
    suffix: None = None
    best_of: Annotated[StrictInt, Field(ge=1, le=1)] | None = None

    @field_validator("echo", "suffix", mode="before")
    @classmethod
    def _unsupported(cls, v: Any, info: Any) -> Any:
        if v not in (None, False):
            raise ValueError(f"{info.field_name} is not supported by Hearth")
        return v
