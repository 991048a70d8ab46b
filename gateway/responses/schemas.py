"""OpenAI Responses API request bodies (``POST /v1/responses``), validated strictly at the edge.

Types are strict and unknown fields are ignored, as on chat completions; Hearth's sampling
extensions (``top_k``, ``min_p``, penalties, ``logit_bias``, ``loop_guard``, ``keep_alive`` …)
come from ``gateway.openai.schemas.SamplingFields``. Input items are told apart by ``type`` (a
bare ``{"role", "content"}`` is a message). Tools Hearth can't run for the model (``web_search``,
``image_generation``, ``local_shell``, MCP …) are accepted here and left out of the prompt by
``translate``, which says so; a ``namespace`` is flattened into its function tools there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway import media
from gateway.bodies import check_unique_names
from gateway.openai.schemas import FUNCTION_NAME, MAX_INT, SamplingFields, _check_schema, _Strict

MAX_ITEMS = 100_000
MEDIA_PARTS = {"input_image": "image", "input_file": "document"}  # by the model's image policy


# -- input items -----------------------------------------------------------------------------


class TextPart(_Strict):
    """A message's text: ``input_text`` (user, system, developer), ``output_text`` (an earlier
    assistant turn), ``refusal``, or chat-style ``text``."""

    type: Literal["input_text", "output_text", "text", "refusal"]
    text: StrictStr | None = None
    refusal: StrictStr | None = None

    @model_validator(mode="after")
    def _has_text(self) -> TextPart:
        if self.type == "refusal":
            if self.refusal is None:
                raise ValueError("a refusal part needs refusal: its text")
        elif self.text is None:
            raise ValueError(f"a {self.type} part needs text")
        return self

    def value(self) -> str:
        return (self.refusal if self.type == "refusal" else self.text) or ""


class MediaPart(_Strict):
    """An image or a file: the models read text only, so by the model's ``images`` policy
    (gateway.media) a 400 naming the part, or a note in its place."""

    type: Literal["input_image", "input_file"]
    filename: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _policy(cls, data: Any, info: ValidationInfo) -> Any:
        if not media.allows(info.context):
            kind = data.get("type") if isinstance(data, dict) else None
            raise ValueError(f"{kind}: " + media.refusal(MEDIA_PARTS.get(str(kind), "image")))
        return data

    def value(self) -> str:
        return media.note(MEDIA_PARTS[self.type], self.filename or "")


class UnsupportedPart(_Strict):
    type: StrictStr

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        raise ValueError(f"content parts of type {kind!r} are not supported; send input_text parts")

    def value(self) -> str:  # never built: validation refuses it
        return ""


_PART_TAGS = {"input_text": "Text", "output_text": "Text", "text": "Text", "refusal": "Text"}
_PART_TAGS |= {"input_image": "Media", "input_file": "Media"}
Part = Annotated[
    Annotated[TextPart, Tag("Text")] | Annotated[MediaPart, Tag("Media")] | Annotated[UnsupportedPart, Tag("Other")],
    Discriminator(lambda v: _PART_TAGS.get(str(v.get("type")), "Other") if isinstance(v, dict) else "Other"),
]
Content = StrictStr | Annotated[list[Part], Field(max_length=MAX_ITEMS)]


def content_text(content: Content | None) -> str:
    if isinstance(content, list):
        return "".join(p.value() for p in content)
    return content or ""


def omitted(content: Content | None) -> int:
    """How many image or file parts ``content_text`` replaced by a note."""
    return sum(isinstance(p, MediaPart) for p in content) if isinstance(content, list) else 0


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: Content
    id: StrictStr | None = None
    status: StrictStr | None = None


class FunctionCallItem(_Strict):
    """A function call the model made in an earlier turn (as a response's output gave it)."""

    type: Literal["function_call"]
    call_id: Annotated[StrictStr, Field(min_length=1)]
    name: Annotated[StrictStr, Field(min_length=1)]
    arguments: StrictStr
    namespace: StrictStr | None = None
    id: StrictStr | None = None
    status: StrictStr | None = None


class FunctionCallOutputItem(_Strict):
    """The client's result for a function call: text, or a list of text parts."""

    type: Literal["function_call_output"]
    call_id: Annotated[StrictStr, Field(min_length=1)]
    output: Content
    id: StrictStr | None = None
    status: StrictStr | None = None


class ReasoningText(_Strict):
    type: StrictStr  # summary_text / reasoning_text
    text: StrictStr


class ReasoningItem(_Strict):
    """Reasoning from an earlier turn: its text goes with the assistant turn after it
    (``encrypted_content`` is only ever OpenAI's own, and ignored)."""

    type: Literal["reasoning"]
    id: StrictStr | None = None
    summary: list[ReasoningText] = []
    content: list[ReasoningText] | None = None
    encrypted_content: StrictStr | None = None


class UnsupportedItem(_Strict):
    """Item types Hearth never produces nor runs (hosted tools' calls, item references …)."""

    type: StrictStr

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        known = "message, function_call, function_call_output, reasoning"
        if kind is None:
            raise ValueError(f"an input item needs a type (or a role, for a message); Hearth takes {known}")
        raise ValueError(f"input items of type {kind!r} are not supported; Hearth takes {known}")


# Tags start upper-case so a bad field's path names no tag (see gateway.bodies._param).
_ITEM_TAGS = {
    "message": "Message",
    "function_call": "FunctionCall",
    "function_call_output": "FunctionCallOutput",
    "reasoning": "Reasoning",
}


def _item_kind(v: Any) -> str:
    if isinstance(v, dict):
        kind = v.get("type", "message" if "role" in v else None)
        return _ITEM_TAGS.get(str(kind), "Other")
    return "Other"


InputItem = Annotated[
    Annotated[MessageItem, Tag("Message")]
    | Annotated[FunctionCallItem, Tag("FunctionCall")]
    | Annotated[FunctionCallOutputItem, Tag("FunctionCallOutput")]
    | Annotated[ReasoningItem, Tag("Reasoning")]
    | Annotated[UnsupportedItem, Tag("Other")],
    Discriminator(_item_kind),
]


# -- tools -----------------------------------------------------------------------------------


class FunctionTool(_Strict):
    type: Literal["function"]
    name: Annotated[StrictStr, Field(pattern=FUNCTION_NAME)]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class NamespaceTool(_Strict):
    """Function tools grouped under a name: the model sees them as ``<namespace>.<name>``, and
    its calls come back as ``function_call`` items with ``namespace`` and ``name`` apart."""

    type: Literal["namespace"]
    name: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: StrictStr | None = None
    tools: Annotated[list[InnerTool], Field(max_length=256)] = []


class OtherTool(_Strict):
    """A tool Hearth can't run for the model (hosted tools: ``web_search``, ``file_search``,
    ``image_generation``, ``code_interpreter``, ``local_shell``, ``mcp``, ``custom`` …)."""

    type: StrictStr
    name: StrictStr | None = None


InnerTool = Annotated[
    Annotated[FunctionTool, Tag("Function")] | Annotated[OtherTool, Tag("Other")],
    Discriminator(lambda v: "Function" if isinstance(v, dict) and v.get("type") == "function" else "Other"),
]


def _tool_kind(v: Any) -> str:
    kind = v.get("type") if isinstance(v, dict) else None
    return {"function": "Function", "namespace": "Namespace"}.get(kind or "", "Other")


ToolParam = Annotated[
    Annotated[FunctionTool, Tag("Function")]
    | Annotated[NamespaceTool, Tag("Namespace")]
    | Annotated[OtherTool, Tag("Other")],
    Discriminator(_tool_kind),
]


NamespaceTool.model_rebuild()


class NamedFunctionChoice(_Strict):
    type: Literal["function"]
    name: StrictStr


# -- the rest ----------------------------------------------------------------------------------


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: StrictStr | None = None
    strict: StrictBool | None = None

    @model_validator(mode="after")
    def _constrained(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("json_schema needs schema: a JSON Schema object")
        if self.type == "json_schema" and self.schema_ is not None:
            _check_schema(self.schema_, "text.format")  # one the grammar can't enforce: a 400 naming it
        return self


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the only one a model without a verbosity knob honours


class Reasoning(_Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None  # accepted: no summarizer, see docs
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponseStreamOptions(_Strict):
    include_obfuscation: StrictBool | None = None  # accepted: Hearth never pads events


INCLUDES = (
    "message.output_text.logprobs",
    "reasoning.encrypted_content",  # accepted: reasoning comes back in plain text, never encrypted
    # results of hosted tools, which Hearth never runs (so there are none to include)
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
)


class ResponsesRequest(SamplingFields):
    """``POST /v1/responses``. ``max_output_tokens`` is the cap (``max_tokens`` is chat's name);
    one answer per request (no ``n``)."""

    input: StrictStr | Annotated[list[InputItem], Field(max_length=MAX_ITEMS)] = []
    instructions: StrictStr | None = None
    max_output_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_INT)] | None = None
    tools: Annotated[list[ToolParam], Field(max_length=256)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    store: StrictBool = True
    previous_response_id: StrictStr | None = None
    include: list[StrictStr] | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    metadata: Annotated[dict[StrictStr, StrictStr], Field(max_length=16)] | None = None
    prompt_cache_key: StrictStr | None = None
    prompt_cache_retention: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    service_tier: StrictStr | None = None
    client_metadata: dict[str, Any] | None = None
    truncation: Literal["disabled"] | None = None
    stream_options: ResponseStreamOptions | None = None  # type: ignore[assignment]
    max_tool_calls: Annotated[StrictInt, Field(ge=1, le=MAX_INT)] | None = None  # hosted tools only
    background: Literal[False] | None = None
    conversation: None = None
    prompt: None = None

    @field_validator("n")
    @classmethod
    def _one(cls, v: int) -> int:
        if v != 1:
            raise ValueError("the Responses API makes one answer per request; send several requests")
        return v

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: int | None) -> int | None:
        if v is not None:
            raise ValueError("the Responses API calls it max_output_tokens")
        return v

    @field_validator("truncation", "background", "conversation", "prompt", mode="before")
    @classmethod
    def _unsupported(cls, v: Any, info: ValidationInfo) -> Any:
        if info.field_name == "truncation" and v == "auto":
            raise ValueError("'auto' is not supported: a prompt too long for the context is a 400; use 'disabled'")
        if info.field_name == "background" and v is True:
            raise ValueError("background responses are not supported: stream, or wait for the answer")
        if info.field_name in ("conversation", "prompt") and v is not None:
            raise ValueError(f"{info.field_name} is not supported by Hearth; send the input (or previous_response_id)")
        return v

    @field_validator("include")
    @classmethod
    def _includes(cls, v: list[str] | None) -> list[str] | None:
        for item in v or []:
            if item not in INCLUDES:
                raise ValueError(f"{item!r} is not a known include; known: {', '.join(INCLUDES)}")
        return v

    @field_validator("tools")
    @classmethod
    def _unique_names(cls, v: list[Any] | None) -> list[Any] | None:
        check_unique_names([t.name for t in v or [] if isinstance(t, FunctionTool)])
        return v

    @field_validator("tool_choice")
    @classmethod
    def _choice_fits_tools(cls, v: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools") or []
        names = {t.name for t in tools if isinstance(t, FunctionTool)}
        for t in tools:
            if isinstance(t, NamespaceTool):
                names |= {f"{t.name}.{f.name}" for f in t.tools if isinstance(f, FunctionTool)}
        if isinstance(v, NamedFunctionChoice):
            if v.name not in names:
                raise ValueError(f"the function '{v.name}' is not among the request's function tools")
        elif v == "required" and not names:
            raise ValueError("'required' needs function tools in the request")
        return v

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _hosted_choice(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("type") not in (None, "function"):
            raise ValueError(
                f"tool_choice type {v.get('type')!r} is not supported: Hearth runs no hosted tools; "
                "use 'auto', 'none', 'required' or {'type': 'function', 'name': ...}"
            )
        return v

    @model_validator(mode="after")
    def _aliases(self) -> ResponsesRequest:
        self.max_tokens = self.max_output_tokens
        return self

    def logprobs_wanted(self) -> bool:
        return "message.output_text.logprobs" in (self.include or []) or bool(self.top_logprobs)
