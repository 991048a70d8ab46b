"""The whole wire contract between the gateway and its workers, in one place.

Each message is a frozen dataclass; its kind is the first frame on the wire and its fields,
as an orjson object, the second (see ``shared.codec`` and docs/protocol.md). A worker says
``PROTOCOL_VERSION`` in ``hello``; the gateway refuses a worker that speaks another version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# 2: tool calls (Generate.input tools, Delta.tool_calls); 3: reasoning (Delta.reasoning);
# 4: embedding workers (embed / embeddings); resuming a generation elsewhere (Delta.token_ids,
# Generate.params["resume"]); 5: constrained decoding (Generate.params response_format, Done.note)
PROTOCOL_VERSION = 5


class Kind(StrEnum):
    """Message kinds: the first frame of every message."""

    # gateway -> worker
    GENERATE = "generate"
    CANCEL = "cancel"
    TOKENIZE = "tokenize"
    DRAIN = "drain"
    EMBED = "embed"
    # worker -> gateway
    HELLO = "hello"
    STATE = "state"
    HEARTBEAT = "heartbeat"
    DELTA = "delta"
    DONE = "done"
    ERROR = "error"
    TOKENS = "tokens"
    STEP = "step"
    EMBEDDINGS = "embeddings"


class WorkerState(StrEnum):
    """A worker's lifecycle: loading -> ready -> (draining -> exit) | crash; failed if it can't load."""

    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


# The keys of ``Generate.params`` (besides ``logprobs``, the top-logprobs count), one list for
# both sides: the gateway passes these from a request and a model's defaults, the worker builds
# its sampler and logits processors from the sampling ones.
SAMPLING_PARAMS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "repetition_context_size",
    "logit_bias",
)
# ``speculative``: false opts a request out of its model's speculative decoding (worker/decode.py)
GENERATE_PARAMS = ("max_tokens", *SAMPLING_PARAMS, "stop", "loop_guard", "speculative")
# Tool-calling keys of ``Generate.params``, set by the API layer when the input offers ``tools``:
# ``tool_choice`` is "auto" | "none" | "required" | {"name": NAME}; ``parallel_tool_calls`` a bool.
TOOL_PARAMS = ("tool_choice", "parallel_tool_calls")
# Constrained decoding, ``Generate.params["response_format"]``: {"type": "json_schema", "schema": {...}},
# {"type": "json_object"}, {"type": "lark", "grammar": "..."} or {"type": "text"} (see shared.grammar).
OUTPUT_PARAMS = ("response_format",)
TOOL_CHOICES = ("auto", "none", "required")
# Reasoning: the chat template's switches are ``Generate.input`` keys (they shape the prompt, so
# ``tokenize`` counts them too): ``enable_thinking`` (bool; false also caps the reasoning at 0
# tokens) and ``reasoning_effort`` (str, for templates that read it), set by the API layer from
# Anthropic's ``thinking`` and OpenAI's ``reasoning_effort``. ``Generate.params`` may hold
# ``thinking_budget`` (int: reasoning tokens before the end marker is forced).
TEMPLATE_SWITCHES = ("enable_thinking", "reasoning_effort")
REASONING_PARAMS = ("thinking_budget",)


@dataclass(frozen=True)
class Generate:
    """Start one generation. ``input`` holds ``messages`` (chat), ``prompt`` (text) or ``tokens``;
    with ``messages`` it may also hold ``tools`` (OpenAI-style function tools). Messages may be
    assistant turns with ``tool_calls`` (OpenAI shape, arguments as JSON text) and
    ``{"role": "tool", "tool_call_id", "content"}`` results; an assistant turn may carry
    ``reasoning_content``, and ``input`` the template switches ``TEMPLATE_SWITCHES``."""

    id: str
    model: str
    input: dict[str, Any]
    params: dict[str, Any]
    stream: bool = True
    KIND = Kind.GENERATE


@dataclass(frozen=True)
class Cancel:
    """Stop generating ``id`` at the next step and forget it; no ``done`` follows."""

    id: str
    KIND = Kind.CANCEL


@dataclass(frozen=True)
class Tokenize:
    """Count the tokens ``input`` (same shape as ``Generate.input``) becomes; answered by ``Tokens``."""

    id: str
    input: dict[str, Any]
    KIND = Kind.TOKENIZE


@dataclass(frozen=True)
class Drain:
    """Finish in-flight work, take no more, then exit."""

    KIND = Kind.DRAIN


@dataclass(frozen=True)
class Embed:
    """Embed ``inputs`` (each a text, or a list of the model's token ids) with an embedding
    model; answered by one ``Embeddings`` (vectors in input order) or an ``Error``. ``params``:
    ``truncate`` (bool, default false: an input over the model's limit is an error) and
    ``dimensions`` (int or null: the vector size asked for)."""

    id: str
    model: str
    inputs: list[Any]
    params: dict[str, Any] = field(default_factory=dict)
    KIND = Kind.EMBED


@dataclass(frozen=True)
class Hello:
    """First message of a worker: who it is and which protocol it speaks."""

    worker_id: str
    model: str
    pid: int
    protocol: int
    config_hash: str = ""
    KIND = Kind.HELLO


@dataclass(frozen=True)
class State:
    """A lifecycle transition; ``detail`` says why (for ``failed``: the load error)."""

    state: WorkerState
    detail: str = ""
    context_length: int = 0
    trained_context: int = 0  # the model's trained length, when context_length goes beyond it (RoPE scaled)
    KIND = Kind.STATE


@dataclass(frozen=True)
class Heartbeat:
    """Sent every second; also proves the worker's loop makes progress. ``memory_bytes`` is the
    process's footprint as the OS sees it (RSS on Linux, physical footprint on macOS), what
    Hearth shows and budgets with; MLX's own counters come beside it (worker/memory.py)."""

    running: int = 0
    waiting: int = 0
    cache_tokens: int = 0
    cache_bytes: int = 0
    memory_bytes: int = 0
    mlx_active_bytes: int = 0
    mlx_cache_bytes: int = 0
    mlx_peak_bytes: int = 0
    # a worker group's rank 0: each rank's {rank, pid, host, memory_bytes, mlx_*_bytes}; the
    # fields above are then the sums over the ranks (docs/protocol.md, Worker groups)
    ranks: list[dict[str, Any]] | None = None
    KIND = Kind.HEARTBEAT


@dataclass(frozen=True)
class Delta:
    """New text since the last delta of request ``id`` (never splits a character), then any tool
    calls completed since: each ``{"index", "id", "name", "arguments"}``, whole (``arguments`` is
    complete JSON text, ``index`` counts from 0 within the request). Text that follows a call
    comes in a later delta, so ``text`` always precedes ``tool_calls``. ``reasoning`` is new text
    of the model's reasoning (between its think markers, which are left out); it precedes
    ``text``, so content followed by more reasoning comes in two deltas."""

    id: str
    text: str
    tokens: int
    logprobs: list[Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    reasoning: str = ""
    # the ids of every token generated since the previous delta, those whose text is still held
    # back included: the gateway keeps them to resume the generation elsewhere if this worker dies
    token_ids: list[int] | None = None
    KIND = Kind.DELTA


@dataclass(frozen=True)
class Done:
    """The request finished; exactly one ``done`` or ``error`` ends every request.
    ``finish_reason``: stop, length, loop, or tool_calls (it ended after at least one tool call).
    ``usage``: prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens (of the
    completion tokens, those of the reasoning, its markers included).
    ``stop`` is the stop string that ended it (``finish_reason`` "stop"), None for an
    end-of-sequence token. ``note`` says what a client should know about how it ended (a tool
    call cut off by ``max_tokens`` and left out)."""

    id: str
    finish_reason: str
    usage: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    stop: str | None = None
    note: str | None = None
    KIND = Kind.DONE


@dataclass(frozen=True)
class Error:
    """The request failed in the worker; ``code`` is machine-readable (see docs/protocol.md)."""

    id: str
    code: str
    message: str
    param: str | None = None  # the request parameter at fault, for a client error
    KIND = Kind.ERROR


@dataclass(frozen=True)
class Tokens:
    """Answer to ``tokenize``."""

    id: str
    count: int
    KIND = Kind.TOKENS


@dataclass(frozen=True)
class Step:
    """Everything one batch step produced (``Delta``, ``Done``, ``Error`` of several requests),
    in order, as one message: with N streams in the batch the worker sends one message per
    step instead of N, and the gateway wakes once."""

    events: list[Any]
    KIND = Kind.STEP


@dataclass(frozen=True)
class Embeddings:
    """Answer to ``embed``: one vector per input, in order; ``usage`` has ``prompt_tokens``
    (every input's tokens, special tokens included)."""

    id: str
    vectors: list[Any]
    usage: dict[str, int] = field(default_factory=dict)
    KIND = Kind.EMBEDDINGS


STEP_KINDS = (Kind.DELTA, Kind.DONE, Kind.ERROR)

Message = (
    Generate
    | Cancel
    | Tokenize
    | Drain
    | Embed
    | Hello
    | State
    | Heartbeat
    | Delta
    | Done
    | Error
    | Tokens
    | Step
    | Embeddings
)

MESSAGE_TYPES: dict[Kind, type] = {
    cls.KIND: cls
    for cls in (
        Generate,
        Cancel,
        Tokenize,
        Drain,
        Embed,
        Hello,
        State,
        Heartbeat,
        Delta,
        Done,
        Error,
        Tokens,
        Step,
        Embeddings,
    )
}

# Error codes in `error` messages (worker_died is the gateway's own, for a worker that vanished).
ERROR_CONTEXT_LENGTH = "context_length_exceeded"
ERROR_GENERATION = "generation_failed"
ERROR_NOT_READY = "not_ready"
ERROR_BAD_REQUEST = "invalid_request"
ERROR_WORKER_DIED = "worker_died"
ERROR_POISON = "poison_request"  # the gateway's own: the request killed its worker twice

# ``Generate.params["resume"]``: the generation continues one whose worker died (worker/resume.py)
RESUME_PARAM = "resume"
