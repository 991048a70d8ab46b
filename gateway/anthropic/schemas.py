"""Anthropic Messages API request bodies, validated strictly at the edge.

Types are strict, ranges follow Anthropic's, unknown fields are ignored (Claude Code sends many
Hearth has no use for). Fields Hearth accepts but does not use (``metadata``, ``service_tier``
…) are still type-checked. Content blocks are told apart by ``type``; an image or document is
replaced by a note or refused by name (the model's ``images`` policy, gateway.media), since the
models are text-only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
    ValidationInfo,
    model_validator,
)

from gateway import media
from gateway.bodies import KeepAlive
from shared.grammar import GrammarError, check_schema, check_tool_schema

MAX_INT = 2**31 - 1
Float = StrictFloat | StrictInt
Prob = Annotated[Float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextBlock(_Strict):
    type: Literal["text"]
    text: StrictStr


class ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: StrictStr
    name: StrictStr
    input: dict[str, Any]


class MediaBlock(_Strict):
    """An image or document block. The models read text only: under the model's
    ``images = "placeholder"`` (the default here) it becomes a note in the prompt
    (gateway.media); under ``reject`` it is refused by name."""

    type: Literal["image", "document"]
    source: dict[str, Any] | None = None
    title: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _policy(cls, data: Any, info: ValidationInfo) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if not media.allows(info.context):
            raise ValueError(
                f"images are not supported by this text-only model (content block type {kind!r}); "
                'configure the model with images = "placeholder" to have them replaced by a note'
            )
        return data

    def note(self) -> str:
        source = self.source or {}
        detail = self.title or source.get("media_type") or source.get("url") or ""
        return media.note(self.type, detail if isinstance(detail, str) else "")


def _text_or_media(v: Any) -> str:
    kind = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    return "Media" if kind in ("image", "document") else "Text"


ResultBlock = Annotated[
    Annotated[TextBlock, Tag("Text")] | Annotated[MediaBlock, Tag("Media")], Discriminator(_text_or_media)
]


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: StrictStr
    content: ToolResultContent | None = None  # a string, or text (and image/document) blocks
    is_error: StrictBool | None = None

    def text(self) -> str:
        """The result as text; an image or document in it becomes its note."""
        if isinstance(self.content, list):
            return "\n\n".join(b.text if isinstance(b, TextBlock) else b.note() for b in self.content)
        return self.content or ""

    def omitted(self) -> int:
        return sum(1 for b in self.content if isinstance(b, MediaBlock)) if isinstance(self.content, list) else 0


class ThinkingBlock(_Strict):
    """A thinking block a client sends back from an earlier turn: its text re-renders as that
    turn's reasoning (``reasoning_content``), where the chat template puts it, so the KV cache
    still holds the conversation. A ``redacted_thinking`` block (opaque ``data``) is left out:
    Hearth never produces one. The ``signature`` is not checked."""

    type: Literal["thinking", "redacted_thinking"]
    thinking: StrictStr = ""
    signature: StrictStr | None = None


class _Unsupported(_Strict):
    """Block types a text-only model can't take: a 400 that says so."""

    type: StrictStr

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        known = "text, tool_use, tool_result, thinking, image, document"
        raise ValueError(f"unsupported content block type {kind!r}; Hearth takes {known}")


# Union members are told apart by the block's ``type`` (so an error speaks of that one member
# only); the tags are capitalised so error locations leave them out (gateway.bodies._param).
_TAGS = {"text": "Text", "tool_use": "ToolUse", "tool_result": "ToolResult", "image": "Media", "document": "Media"}


def _block_tag(v: Any) -> str:
    kind = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    if kind in ("thinking", "redacted_thinking"):
        return "Thinking"
    return _TAGS.get(str(kind), "Unsupported")


Block = Annotated[
    Annotated[TextBlock, Tag("Text")]
    | Annotated[ToolUseBlock, Tag("ToolUse")]
    | Annotated[ToolResultBlock, Tag("ToolResult")]
    | Annotated[ThinkingBlock, Tag("Thinking")]
    | Annotated[MediaBlock, Tag("Media")]
    | Annotated[_Unsupported, Tag("Unsupported")],
    Discriminator(_block_tag),
]


def _str_or_list(v: Any) -> str:
    return "Str" if isinstance(v, str) else "List"


Content = Annotated[Annotated[StrictStr, Tag("Str")] | Annotated[list[Block], Tag("List")], Discriminator(_str_or_list)]
SystemPrompt = Annotated[
    Annotated[StrictStr, Tag("Str")] | Annotated[list[TextBlock], Tag("List")], Discriminator(_str_or_list)
]
ToolResultContent = Annotated[
    Annotated[StrictStr, Tag("Str")] | Annotated[list[ResultBlock], Tag("List")], Discriminator(_str_or_list)
]


class InputMessage(_Strict):
    """A turn. ``system`` inside ``messages`` is Claude Code's mid-conversation system message
    (beta ``mid-conversation-system``): it stays in its place as a system-role message."""

    role: Literal["user", "assistant", "system"]
    content: Content

    @model_validator(mode="after")
    def _blocks_fit_role(self) -> InputMessage:
        if isinstance(self.content, list):
            for i, b in enumerate(self.content):
                if isinstance(b, ToolUseBlock) and self.role != "assistant":
                    raise ValueError(f"content[{i}]: tool_use blocks belong in assistant messages")
                if isinstance(b, ToolResultBlock) and self.role != "user":
                    raise ValueError(f"content[{i}]: tool_result blocks belong in user messages")
        return self


class Tool(_Strict):
    name: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    description: StrictStr | None = None
    input_schema: dict[str, Any]  # a call's input is held to it by a grammar
    strict: StrictBool | None = None  # accepted: inputs are always held to the schema

    @field_validator("input_schema")
    @classmethod
    def _compiles(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            check_tool_schema(v, "input_schema")
        except GrammarError as e:
            raise ValueError(e.detail) from None
        return v


class JsonOutputFormat(_Strict):
    """Structured outputs: the answer's text is JSON that validates against ``schema``."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")

    @field_validator("schema_")
    @classmethod
    def _compiles(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            check_schema(v, "output_config.format")
        except GrammarError as e:
            raise ValueError(e.detail) from None
        return v


class OutputConfig(_Strict):
    """``output_config``: ``format`` is enforced; ``effort`` is accepted (type-checked) and not
    used by Hearth's models."""

    format: JsonOutputFormat | None = None
    effort: StrictStr | None = None


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = None
    disable_parallel_tool_use: StrictBool | None = None  # true: at most one call (parallel_tool_calls false)

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("a tool_choice of type 'tool' needs the tool's name")
        return self


class Thinking(_Strict):
    """Extended thinking: ``enabled`` (with ``budget_tokens``, the most tokens the reasoning may
    take before the end marker is forced) or ``adaptive`` turn the chat template's thinking
    switch on, ``disabled`` turns it off and allows no reasoning output. Budgets under
    Anthropic's minimum of 1,024 are accepted."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[StrictInt, Field(ge=0, le=MAX_INT)] | None = None

    @model_validator(mode="after")
    def _budget(self) -> Thinking:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("budget_tokens: thinking of type 'enabled' needs budget_tokens")
        if self.type != "enabled" and self.budget_tokens is not None:
            raise ValueError(f"budget_tokens: only thinking of type 'enabled' takes budget_tokens, not {self.type!r}")
        return self


class PromptFields(_Strict):
    """What becomes the prompt: shared by ``/v1/messages`` and ``/v1/messages/count_tokens``, so
    both translate it the same way and count the same tokens."""

    model: StrictStr
    messages: Annotated[list[InputMessage], Field(min_length=1, max_length=100_000)]
    system: SystemPrompt | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> PromptFields:
        tc = self.tool_choice
        if tc is not None and tc.type == "tool" and tc.name not in {t.name for t in self.tools or []}:
            raise ValueError(f"tool_choice: it names the tool {tc.name!r}, which is not in tools")
        return self


class MessagesRequest(PromptFields):
    max_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_INT)]
    stop_sequences: Annotated[list[StrictStr], Field(max_length=16)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=1)] | None = None
    top_p: Prob | None = None
    top_k: Annotated[StrictInt, Field(ge=0, le=MAX_INT)] | None = None
    stream: StrictBool = False
    # Hearth/Ollama extension, as on the OpenAI endpoints: how long the model stays loaded once idle
    keep_alive: KeepAlive | None = None
    # Hearth extension, as on the OpenAI endpoints: false opts out of speculative decoding
    speculative: StrictBool | None = None
    # accepted and ignored (type-checked so a malformed one is still a clear 400)
    metadata: dict[str, Any] | None = None
    context_management: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    output_format: JsonOutputFormat | None = None  # the structured-outputs beta's name for output_config.format
    service_tier: StrictStr | None = None
    container: StrictStr | dict[str, Any] | None = None
    mcp_servers: list[Any] | None = None

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON Schema the answer is held to (``output_config.format``, or the beta's
        ``output_format``), None when there is none."""
        fmt = self.output_config.format if self.output_config is not None else None
        fmt = fmt or self.output_format
        return fmt.schema_ if fmt is not None else None


class CountTokensRequest(PromptFields):
    """``/v1/messages/count_tokens``: the prompt fields alone (no ``max_tokens``)."""
