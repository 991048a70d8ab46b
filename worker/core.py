"""The worker's engine core: requests in, protocol events out, no sockets.

It drives mlx-lm's ``BatchGenerator`` (continuous batching): ``add`` inserts a request into
the running batch, ``step`` advances every sequence by one token and returns the deltas and
completions that step produced, ``cancel`` frees a sequence at once. ``worker.proc`` wraps it
with ZeroMQ; tests can drive it in-process.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import orjson
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import make_prompt_cache

from shared.config import ModelConfig
from shared.protocol import (
    ERROR_BAD_REQUEST,
    ERROR_CONTEXT_LENGTH,
    ERROR_GENERATION,
    Delta,
    Done,
    Error,
    Generate,
    Message,
)
from worker.admission import Admission, Arrival
from worker.decode import DecodeBatch, Row, Token, can_verify
from worker.detok import TextStream
from worker.draft import DraftModel, load_draft
from worker.lookup import PromptLookup
from worker import device
from shared import device as device_rules
from worker.speculation import StepCost, Tally, draft_cap
from worker.loops import LoopGuard
from worker.prompt_cache import SYSTEM, PromptCache
from worker.model import LoadedModel
from worker.first_token import first_token, takes_direct_path
from worker.grammar import Constraint, NoGrammarTokenizer, grammar_tokenizer, tool_grammar, with_reasoning
from shared.grammar import GrammarError, response_grammar
from worker.resume import Resume, ResumeMismatch, fast_forward, unsent
from worker import testhook
from worker.reasoning import ReasoningBudget, ReasoningSyntax, ReasoningText, ThinkCounter, budget_of
from worker.sampling import (
    LogitsProcessor,
    ParamError,
    Sampler,
    is_greedy,
    is_seeded,
    make_request_processors,
    make_request_sampler,
)
from worker.templating import Prompt, TemplateError, render, system_prefix
from worker.toolcalls import ToolCall, ToolCallStream, ToolSyntax


def _same(sampler: Sampler) -> Sampler:
    return sampler


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE table, unicode character -> byte (transformers' public helper)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


@dataclass
class _Live:
    """One request inside the batch."""

    id: str
    uid: int
    text: TextStream
    prompt_tokens: int
    top_logprobs: int | None
    t_start: float
    cached_tokens: int = 0
    t_admitted: float = 0.0  # when its prefill was put in a batch (held arrivals wait for it)
    t_first: float = 0.0
    completion_tokens: int = 0
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    guard: LoopGuard | None = None
    generated: list[int] = field(default_factory=list)  # kept only for the loop guard
    loop: tuple[int, int] | None = None
    tools: ToolCallStream | None = None  # when tools were offered: holds back and parses calls
    constraint: Constraint | None = None  # a grammar held the output to a format (response_format, tool calls)
    reasoning: ReasoningText | None = None  # a chat on a reasoning model: splits reasoning from content
    thoughts: ThinkCounter | None = None  # counts its reasoning tokens
    ids: list[int] = field(default_factory=list)  # token ids not yet sent in a delta (Delta.token_ids)
    exit_at: int = 0  # the test hook's trigger (worker/testhook.py); 0 always outside its tests
    # what the decode batch needs to take it over (worker/decode.py)
    sampler: Sampler | None = None
    processors: list[LogitsProcessor] = field(default_factory=list)
    budget: int = 0  # completion tokens it may have in all (max_tokens)
    speculate: bool = False  # it drafts (the model speculates and the request did not opt out)
    prefill_left: int = 0  # prompt segments the batch generator has still to prefill
    last_token: int = 0  # the prompt's last token: the decode batch's first input
    tally: Tally = field(default_factory=Tally)


WARM_FORMAT = "kv-2"  # bump when the saved KV's layout or meaning changes: old saves are then ignored


def _prefill_segments(segments: list[list[int]]) -> int:
    """How many of a prompt's ``segments`` the batch generator prefills before it decodes: all
    that are not empty, its last one split in two when longer than a token (mlx-lm's
    ``insert_segments`` runs the prompt's last token as the first decode step)."""
    parts = [s for s in segments if s]
    return len(parts) if parts and len(parts[-1]) != 1 else len(parts) - 1


@dataclass(frozen=True)
class Rendered:
    """A request's prompt, rendered (``EngineCore.render``)."""

    prompt: Prompt
    system_len: int  # its system part's length (0: none, or no prompt cache to keep it in)
    started: float  # when rendering began (perf_counter): an arrival's timings count it


class EngineCore:
    """Continuous batching over one loaded model."""

    def __init__(self, loaded: LoadedModel, cfg: ModelConfig) -> None:
        self.m = loaded
        self.cfg = cfg
        self._live: dict[str, _Live] = {}
        self._by_uid: dict[int, _Live] = {}
        self._gen = self._new_generator()
        self._bytes_cache: dict[int, bytes] = {}
        self.prompt_cache = (
            PromptCache(cfg.prompt_cache_entries, cfg.prompt_cache_bytes)
            if cfg.prompt_cache_bytes and cfg.prompt_cache_entries
            else None
        )
        self.broken: str | None = None  # set when a step failed: the worker must restart
        self._system_pending: set[str] = set()  # requests whose system prompt is being prefilled
        self.tool_syntax = ToolSyntax.of(loaded.tokenizer, cfg.tool_parser)  # None: no tool calling
        self.reasoning_syntax = ReasoningSyntax.of(loaded.tokenizer)  # None: no reasoning markers
        # a worker group's ranks draw rank 0's tokens (worker/group.py); one process: the sampler itself
        self.wrap_sampler: Callable[[Sampler], Sampler] = _same
        self.speculation = cfg.speculation(device.backend()) if can_verify(make_prompt_cache(loaded.model)) else "off"
        self._in_gen: set[int] = set()  # uids inside the batch generator (prefilling, or decoding)
        self._draft_model = load_draft(cfg, loaded) if self.speculation == "draft" else None
        self._decode = self._new_decode()
        self._own_uid = 1 << 40  # uids for sequences that never enter the batch generator
        self._admission = Admission(cfg.admission(device.backend()))  # worker/admission.py

    def _new_decode(self) -> DecodeBatch | None:
        """The decode batch when this model speculates (worker/decode.py); None: every
        sequence decodes in mlx-lm's batch generator, one token per step."""
        if self.speculation == "off":
            return None
        return DecodeBatch(
            self.m.model,
            set(self.m.tokenizer.eos_token_ids),
            self.cfg.speculative_tokens,
            device_rules.speculative_budget(device.backend(), self.cfg.speculative_budget),
            keep_caches=self.prompt_cache is not None,
            cost=StepCost(*device_rules.speculation_cost(device.backend())),
            width=functools.partial(device_rules.verify_width, device.backend()),
            drafter=DraftModel(self._draft_model) if self._draft_model is not None else None,
            chain_cost=(
                StepCost(*device_rules.chained_speculation_cost(device.backend()))
                if self.cfg.speculative_chain
                else None
            ),
        )

    def warm_speculation(self) -> list[int]:
        """Run the forward widths steps with drafts will use, over the decode batch's rows (the
        load-time warm-up's; worker.warmup). Returns the widths run."""
        if self._decode is None or not self._decode.rows:
            return []
        cap = draft_cap(self.cfg.speculative_tokens, self._decode.budget, len(self._decode.rows))
        widths = device_rules.verify_widths(device.backend(), cap)
        self._decode.warm(widths)
        return widths

    def _new_generator(self) -> BatchGenerator:
        return BatchGenerator(
            self.m.model,
            stop_tokens=[[t] for t in sorted(self.m.tokenizer.eos_token_ids)],
            completion_batch_size=self.cfg.max_batch,
            prefill_batch_size=self.cfg.max_batch,  # arrivals prefill together: fewer stalls of the decoding ones
            prefill_step_size=self.cfg.prefill_step,
        )

    # -- requests ---------------------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        return bool(self._live)

    @property
    def running(self) -> int:
        return sum(1 for r in self._live.values() if r.t_first)

    @property
    def waiting(self) -> int:
        return len(self._live) - self.running

    # -- warm restarts ----------------------------------------------------------------------

    def warm_folder(self) -> Path:
        """Where this model's saved prompt caches live: keyed by the weights (folder, file sizes
        and times), by the settings that change what a KV means for the same weights (the
        dtype the model is cast to, the context length and RoPE scaling: a YaRN-stretched
        model's keys are rotated otherwise) and by ``WARM_FORMAT``, so a cache is never applied
        to other weights or settings than those that made it, nor read by a Hearth that lays the
        KV out differently (a stale worker group's shards, saved before the group's layout
        settled, gave garbage answers)."""
        from worker.gguf import default_cache_dir

        files = sorted(self.m.folder.glob("*.safetensors"))
        kv = orjson.dumps([self.cfg.dtype, self.cfg.context_length, self.cfg.rope_scaling]).decode()
        ident = [WARM_FORMAT, str(self.m.folder.resolve()), kv]
        ident += [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
        key = hashlib.sha256("\n".join(ident).encode()).hexdigest()[:16]
        return default_cache_dir() / "prompt-cache" / f"{self.m.folder.name}-{key}"

    def save_warm(self) -> int:
        """At drain: keep the hottest prompt caches on disk for the next worker of this model."""
        if self.prompt_cache is None or not self.cfg.warm_cache_bytes or not len(self.prompt_cache):
            return 0
        return self.prompt_cache.save(self.warm_folder(), self.cfg.warm_cache_bytes)

    def load_warm(self) -> int:
        """At start: take in what the previous worker of this model saved."""
        if self.prompt_cache is None or not self.cfg.warm_cache_bytes:
            return 0
        budget = min(self.cfg.warm_cache_bytes, self.cfg.prompt_cache_bytes)
        return self.prompt_cache.load(self.warm_folder(), budget)

    def count_tokens(self, inp: dict[str, Any]) -> int:
        return len(render(self.m.tokenizer, inp, self.tool_syntax, mode=self.cfg.tools).tokens)

    @property
    def renders_aside(self) -> bool:
        """Whether arrivals are rendered on a side thread (worker/prep.py): where the engine
        holds arrivals for admission, so they wait a step anyway."""
        return self._admission.hold_steps > 0

    def arrivals_coming(self) -> None:
        """Arrivals were read that ``add`` will take once rendered aside: the burst goes on."""
        self._admission.coming()

    def render(self, req: Generate) -> Rendered:
        """``req``'s prompt and the length of its system part: the tokenizer's work of ``add``,
        which may run on another thread (it builds no MLX arrays). Raises TemplateError."""
        started = time.perf_counter()
        prompt = render(self.m.tokenizer, req.input, self.tool_syntax, req.params, self.cfg.tools)
        system_len = system_prefix(self.m.tokenizer, req.input, prompt) if self.prompt_cache is not None else 0
        return Rendered(prompt, system_len, started)

    def add(self, req: Generate, rendered: Callable[[], Rendered] | None = None) -> list[Message]:
        """Insert ``req`` into the batch; an input the model can't take is answered at once.
        ``rendered``: its rendering, done aside (``render``; it raises what rendering raised)."""
        params = req.params
        try:
            r = self.render(req) if rendered is None else rendered()
        except TemplateError as e:
            return [Error(req.id, ERROR_BAD_REQUEST, str(e), e.param)]
        prompt, system_len = r.prompt, r.system_len
        t_received = r.started  # its timings count the template and the cache lookup too
        tokens = prompt.tokens
        ctx = self.m.context_length
        if not tokens:
            return [Error(req.id, ERROR_BAD_REQUEST, "the prompt is empty")]
        if len(tokens) >= ctx:
            return [
                Error(
                    req.id,
                    ERROR_CONTEXT_LENGTH,
                    f"the prompt has {len(tokens)} tokens; the model's context is {ctx} tokens",
                )
            ]
        try:
            resume = Resume.of(params, self.m.vocab_size)
        except ValueError as e:
            return [Error(req.id, ERROR_BAD_REQUEST, str(e), "resume")]
        forced = resume.tokens if resume is not None else []
        room = ctx - len(tokens)
        asked = params.get("max_tokens") or self.cfg.max_tokens or room
        max_tokens = max(1, min(int(asked), room)) - len(forced)  # what is left of the whole answer's
        tokens = tokens + forced  # a resume continues the tokens generated so far (prompt.tokens: the prompt)
        thinking = self.reasoning_syntax if "messages" in req.input else None  # chats only
        inside = thinking is not None and not prompt.prefill and thinking.opens(prompt.tokens)
        try:
            sampler = self.wrap_sampler(make_request_sampler(params, self.m.vocab_size, draws=len(forced)))
            processors = make_request_processors(params, self.m.vocab_size)
            # a forced call's prefill already closed any reasoning block: the grammar starts after it
            constraint = self._constraint(params, prompt, None if prompt.prefill else thinking, inside)
        except (ParamError, GrammarError) as e:
            return [Error(req.id, ERROR_BAD_REQUEST, str(e), e.param)]
        except Exception as e:  # the gateway validates; this only guards against an mlx-lm change
            return [Error(req.id, ERROR_GENERATION, f"sampling setup failed: {e}")]
        cache, cached = self.prompt_cache.lookup(tokens, system_len) if self.prompt_cache is not None else (None, 0)
        if cached < system_len:  # prefill the system prompt as a segment of its own, to cache it
            segments = [tokens[cached:system_len], tokens[system_len:]]
            self._system_pending.add(req.id)
        else:
            segments = [tokens[cached:]]
        stop = params.get("stop") or []
        detok = self.m.tokenizer.detokenizer
        split = ReasoningText(detok, thinking, inside) if thinking is not None else None
        budget = budget_of(req.input, params) if thinking is not None else None
        if thinking is not None and budget is not None:
            processors = [*processors, ReasoningBudget(thinking, budget, inside)]
        if constraint is not None:
            processors = [*processors, constraint]  # last: nothing after it can lift the mask
        live = _Live(
            id=req.id,
            uid=-1,
            text=TextStream(split or detok, [stop] if isinstance(stop, str) else stop),
            prompt_tokens=len(prompt.tokens),
            top_logprobs=params.get("logprobs"),
            t_start=t_received,
            cached_tokens=min(cached, len(prompt.tokens)),
            guard=LoopGuard.from_param(params.get("loop_guard")),
            constraint=constraint,
            reasoning=split,
            thoughts=ThinkCounter(thinking, inside) if thinking is not None else None,
            exit_at=testhook.exit_at(req.input, len(forced)),
            sampler=sampler,
            processors=processors,
            budget=max_tokens + len(forced),
            speculate=self._decode is not None and params.get("speculative", True) is not False,
            last_token=tokens[-1],
        )
        if prompt.tools and prompt.syntax is not None:
            parallel = params.get("parallel_tool_calls", True) is not False
            live.tools = ToolCallStream(prompt.syntax, prompt.tools, prompt.prefill, parallel)
        replayed: list[Message] = []
        if resume is not None:
            try:
                fast_forward(processors, prompt.tokens, forced, self.m.vocab_size)
                replayed = self._replay(live, resume, max_tokens)
            except ResumeMismatch as e:
                replayed = [Error(req.id, ERROR_GENERATION, f"the generation could not be resumed: {e}")]
            if replayed and not isinstance(replayed[-1], Delta):
                # an error, or a forced token ended it (it cannot: its done went out with that token)
                self._system_pending.discard(req.id)
                return replayed
        idle = not self._live  # with others in the batch, their steps share the prefill anyway
        warm = takes_direct_path(cached, len(tokens), self.cfg.prefill_step)
        if idle and warm and cache is not None and len(segments) == 1:
            return replayed + self._start_direct(live, tokens, cached, cache, sampler, processors, max_tokens)
        if self._decode is not None:
            live.prefill_left = _prefill_segments(segments)
            if not live.prefill_left:  # one new token: it is the decode batch's next input
                self._live[req.id] = live
                self._to_decode(live, cache if cache is not None else make_prompt_cache(self.m.model), tokens)
                return replayed
        arrival = Arrival(live, segments, max_tokens, cache, tokens[:cached], sampler, processors)
        if self._admission.holds(self.running > 0):  # inserted with others a few steps later
            self._live[req.id] = live
            self._admission.hold(arrival, fresh=rendered is None)  # one rendered aside: ``arrivals_coming``
            return replayed
        self._insert([arrival])
        return replayed

    def _insert(self, arrivals: list[Arrival]) -> None:
        """Put ``arrivals`` into the batch generator, in one call (their prefill is one pass)."""
        uids = self._gen.insert_segments(
            [a.segments for a in arrivals],
            max_tokens=[a.max_tokens for a in arrivals],
            caches=[a.cache for a in arrivals],  # type: ignore[misc]  # None: a fresh cache
            all_tokens=[a.cached for a in arrivals],
            samplers=[a.sampler for a in arrivals],
            logits_processors=[a.processors for a in arrivals],
        )
        now = time.perf_counter()
        for a, uid in zip(arrivals, uids, strict=True):
            live = a.live
            live.uid = uid
            live.t_admitted = now
            self._live[live.id] = live  # only once it is in the batch: a failed insert leaves nothing behind
            self._by_uid[uid] = live
            self._in_gen.add(uid)

    def _to_decode(
        self, live: _Live, cache: list[Any], tokens: list[int], pending: int | None = None, sent: int = 0
    ) -> None:
        """Hand ``live`` to the decode batch: ``cache`` holds ``tokens`` but the last (that one
        is its next input) or, with ``pending`` (its first token, ``sent`` but not yet counted),
        all of them."""
        assert self._decode is not None and live.sampler is not None
        if pending is None:
            tokens, pending = tokens[:-1], tokens[-1]
        if live.uid < 0:
            live.uid, self._own_uid = self._own_uid, self._own_uid + 1
        live.t_admitted = live.t_admitted or time.perf_counter()
        history = [*tokens, pending]
        row = Row(
            uid=live.uid,
            tokens=list(tokens),
            pending=pending,
            left=live.budget - live.completion_tokens - sent,
            sampler=live.sampler,
            processors=live.processors,
            greedy=is_greedy(live.sampler),
            sequential=is_seeded(live.sampler),
            lookup=PromptLookup(history) if live.speculate and self.speculation == "lookup" else None,
            tally=live.tally,
            speculate=live.speculate,
            logprobs=live.top_logprobs is not None,
        )
        self._decode.add(row, cache)
        self._by_uid[live.uid] = live

    def _prefilled(self, prompt_responses: list[Any]) -> None:
        """Sequences whose prompt the batch generator has processed, all but its last token:
        they move to the decode batch, which samples their first token."""
        done: list[_Live] = []
        for r in prompt_responses:
            live = self._by_uid.get(r.uid)
            if live is None or not r.end_of_segment or r.uid not in self._in_gen:
                continue
            live.prefill_left -= 1
            if live.prefill_left == 0:
                done.append(live)
        if not done:
            return
        caches = self._gen.remove([live.uid for live in done], return_prompt_caches=True)  # one filter for all
        for live in done:
            self._in_gen.discard(live.uid)
            cache, held = caches[live.uid]
            self._to_decode(live, cache, [*held, live.last_token])

    def _replay(self, live: _Live, resume: Resume, left: int) -> list[Message]:
        """A resume's forced tokens through the per-token path (worker/resume.py), without
        logprobs; returns what of their output the client does not have yet. With nothing
        ``left`` of ``max_tokens``, the last forced token ends the generation (``length``)."""
        top, live.top_logprobs = live.top_logprobs, None
        out: list[Message] = []
        last = len(resume.tokens) - 1
        for i, token in enumerate(resume.tokens):
            finish = "length" if i == last and left < 1 else None
            out.extend(self._respond(live, Token(-1, token, None, finish, [], []), time.perf_counter()))
        live.top_logprobs, live.t_first, live.ids = top, 0.0, []
        deltas, rest = unsent(resume, out)
        return [*deltas, *rest]

    def _constraint(
        self, params: dict[str, Any], prompt: Prompt, thinking: ReasoningSyntax | None, inside: bool
    ) -> Constraint | None:
        """The request's grammar as a logits processor: its ``response_format``, or, when tools
        are offered in a format Hearth has a grammar for, the answer with its tool calls. On a
        reasoning model a reasoning block (already open when ``inside``) may come first, free."""
        grammar = response_grammar(params.get("response_format"))
        param = "response_format"
        if prompt.tools and prompt.syntax is not None:
            if grammar is not None:
                raise GrammarError(
                    "response_format",
                    'a json format can\'t be combined with tools; send tool_choice "none" or leave out response_format',
                )
            try:
                tok = grammar_tokenizer(self.m)
            except NoGrammarTokenizer:
                return None  # calls are then parsed, not constrained (as for formats without a grammar)
            choice = params.get("tool_choice") or "auto"
            parallel = params.get("parallel_tool_calls", True) is not False
            grammar = tool_grammar(tok, prompt.syntax, prompt.tools, choice, parallel)
            param = "tools"
        if grammar is None:
            return None
        tok = grammar_tokenizer(self.m)
        if thinking is not None:
            grammar = with_reasoning(tok, grammar, thinking.start, thinking.end, inside)
        prefill = self.m.tokenizer.encode(prompt.prefill, add_special_tokens=False) if prompt.prefill else []
        return Constraint(tok, grammar, param, prefill)

    def _start_direct(
        self,
        live: _Live,
        tokens: list[int],
        cached: int,
        cache: list[Any],
        sampler: Sampler,
        processors: list[LogitsProcessor],
        max_tokens: int,
    ) -> list[Message]:
        """A warm prompt: its first token at once (``worker.first_token``), then the batch."""
        self._live[live.id] = live
        live.t_admitted = time.perf_counter()
        try:
            token, logprobs = first_token(self.m.model, tokens, cached, cache, sampler, processors)
        except Exception as e:  # as a failed batch step: MLX state can't be trusted any more
            return self.fail_all(ERROR_GENERATION, f"generation failed: {type(e).__name__}: {e}")
        finish = "stop" if token in self.m.tokenizer.eos_token_ids else "length" if max_tokens == 1 else None
        if finish is None and self._decode is not None:
            self._to_decode(live, cache, list(tokens), pending=token, sent=1)
        elif finish is None:
            (live.uid,) = self._gen.insert(
                [[token]],
                max_tokens=[max_tokens - 1],
                caches=[cache],
                all_tokens=[list(tokens)],
                samplers=[sampler],
                logits_processors=[processors],
            )
            self._by_uid[live.uid] = live
            self._in_gen.add(live.uid)
        first = Token(live.uid, token, logprobs, finish, list(tokens), cache)
        return self._respond(live, first, time.perf_counter())

    def cancel(self, rid: str) -> None:
        live = self._live.get(rid)
        if live is not None:
            self._drop(live)

    def cancel_all(self) -> None:
        for live in list(self._live.values()):
            self._drop(live)

    def _drop(self, live: _Live) -> None:
        self._system_pending.discard(live.id)
        if self._admission.drop(live):  # held: not in any batch yet
            self._live.pop(live.id, None)
            return
        self._remove(live.uid)
        self._live.pop(live.id, None)
        self._by_uid.pop(live.uid, None)

    def _remove(self, uid: int) -> None:
        """Take a sequence out of the batch, keeping its KV cache for later prompts."""
        if self._decode is not None and uid not in self._in_gen:
            if uid in self._decode:
                cache, tokens = self._decode.remove(uid)
                self._keep(tokens, cache)
            return
        self._in_gen.discard(uid)
        caches = self._gen.remove([uid], return_prompt_caches=self.prompt_cache is not None)
        for cache, tokens in caches.values():
            self._keep(tokens, cache)

    def _keep(self, tokens: list[int] | None, cache: list[Any] | None) -> None:
        if self.prompt_cache is not None and tokens:
            self.prompt_cache.store(tokens, cache)

    def fail_all(self, code: str, message: str) -> list[Message]:
        """Fail every request in flight. MLX state after a failed step can't be trusted (compiled
        samplers stay broken), so the core is ``broken`` and the process restarts clean."""
        out: list[Message] = [Error(r.id, code, message) for r in self._live.values()]
        self._live.clear()
        self._by_uid.clear()
        self._system_pending.clear()
        self._in_gen.clear()
        self._admission.clear()
        self._decode = self._new_decode()
        self.broken = message
        return out

    # -- stepping ---------------------------------------------------------------------------

    def step(self) -> list[Message]:
        """Advance every sequence one token; return this step's deltas and completions."""
        if not self._live:
            return []
        try:
            if self._admission.held:  # (``running`` walks every request: not on each step for nothing)
                due = self._admission.due(self.running > 0)
                if due:
                    self._insert(due)
            else:
                self._admission.quiet()
            responses: list[Any] = []
            if self._in_gen or self._decode is None:
                prompt_responses, responses = self._gen.next()
                if self._system_pending:
                    self._keep_system_prompts(prompt_responses)
                if self._decode is not None:
                    self._prefilled(prompt_responses)
            decoded = self._decode.step() if self._decode is not None else []
        except Exception as e:  # a failed step fails its requests, loudly, and the batch restarts
            return self.fail_all(ERROR_GENERATION, f"generation failed: {type(e).__name__}: {e}")
        out: list[Message] = []
        now = time.perf_counter()
        for r in responses:
            live = self._by_uid.get(r.uid)
            if live is not None:
                if r.finish_reason is not None:
                    self._in_gen.discard(r.uid)
                out.extend(self._respond(live, r, now))
        for uid, tokens in decoded:
            live = self._by_uid.get(uid)
            for t in tokens:  # several when drafts were accepted; those after a finish are dropped
                if live is None or live.id not in self._live:
                    break
                out.extend(self._respond(live, t, now))
        return out

    def _respond(self, live: _Live, r: Any, now: float) -> list[Message]:
        """One generated token of ``live`` (a batch response, or the direct first token): its
        text, logprobs, tool calls, and the ``done`` if it ended the request."""
        out: list[Message] = []
        live.completion_tokens += 1
        live.t_first = live.t_first or now
        live.ids.append(r.token)
        if live.exit_at and live.completion_tokens >= live.exit_at:
            testhook.die()
        if r.finish_reason == "stop":  # an end-of-sequence token: not part of the text
            text = live.text.finish()
        else:
            text = live.text.push(r.token)
            if r.finish_reason == "length":
                text += live.text.finish()
        if live.top_logprobs is not None and r.finish_reason != "stop" and r.logprobs is not None:
            live.logprobs.append(self._logprob_entry(r.token, r.logprobs, live.top_logprobs))
        if live.thoughts is not None and r.finish_reason != "stop":
            live.thoughts.feed(r.token)
        finish = r.finish_reason
        if live.text.stopped:
            finish = "stop"
        elif live.guard is not None and finish is None:
            live.generated.append(r.token)
            live.loop = live.guard.check(live.generated)
            if live.loop is not None:
                finish = "loop"
                text += live.text.finish()
        events: list[str | ToolCall] = [text]
        if live.tools is not None:
            events = live.tools.push(text)
            if live.tools.closed and finish is None:
                finish = "stop"  # parallel_tool_calls is off and the one call is complete
            if finish is not None:
                events += live.tools.finish(cut=finish != "stop")
                if finish == "stop" and live.tools.calls:
                    finish = "tool_calls"
        if finish is not None and r.finish_reason is None:
            self._remove(r.uid)
        elif finish is not None:
            self._keep(r.all_tokens, r.prompt_cache)
        out.extend(self._deltas(live, events, live.reasoning.take() if live.reasoning is not None else ""))
        if finish is not None:
            failed = live.constraint.error if live.constraint is not None else None
            if failed is not None:  # the grammar lost track: the output can't be vouched for
                out.append(Error(live.id, ERROR_GENERATION, f"constrained decoding failed: {failed}"))
            else:
                out.append(self._done(live, finish, now))
            self._system_pending.discard(live.id)
            self._live.pop(live.id, None)
            self._by_uid.pop(live.uid, None)
        return out

    def _keep_system_prompts(self, prompt_responses: list[Any]) -> None:
        """A system prompt just finished prefilling: cache it as an entry of its own."""
        for r in prompt_responses:
            live = self._by_uid.get(r.uid)
            if live is None or live.id not in self._system_pending or not r.end_of_segment or r.end_of_prompt:
                continue
            self._system_pending.discard(live.id)
            for cache, tokens in self._gen.extract_cache([r.uid]).values():
                if self.prompt_cache is not None:
                    self.prompt_cache.store(tokens[:], cache, SYSTEM)

    def _deltas(self, live: _Live, events: list[str | ToolCall], reasoning: str = "") -> list[Delta]:
        """One step's reasoning, text and tool calls as deltas: each delta's text precedes its
        calls, so text written after a call starts a new delta. Logprobs and the step's
        reasoning (which precedes its text: a step never holds content and then reasoning, as a
        marker is a token of its own or released with the text before it) ride on the first."""
        if len(events) == 1 and isinstance(events[0], str):  # no tool calls: the usual case
            logprobs, live.logprobs = live.logprobs or None, []
            if not (events[0] or logprobs or reasoning):
                return []  # its token ids ride on the next delta
            ids, live.ids = live.ids, []
            return [Delta(live.id, events[0], live.completion_tokens, logprobs, None, reasoning, ids)]
        out: list[Delta] = []
        text, calls = "", list[ToolCall]()
        for ev in events:
            if isinstance(ev, str):
                if calls:
                    out.append(Delta(live.id, text, live.completion_tokens, None, calls))
                    text, calls = "", []
                text += ev
            else:
                calls.append(ev)
        if text or calls or not out:
            out.append(Delta(live.id, text, live.completion_tokens, None, calls or None))
        if live.logprobs or reasoning:
            first = out[0]
            out[0] = Delta(first.id, first.text, first.tokens, live.logprobs or None, first.tool_calls, reasoning)
            live.logprobs = []
        out = [d for d in out if d.text or d.logprobs or d.tool_calls or d.reasoning]
        if out:
            first = out[0]
            out[0] = Delta(
                first.id, first.text, first.tokens, first.logprobs, first.tool_calls, first.reasoning, live.ids
            )
            live.ids = []
        return out

    def _done(self, live: _Live, finish: str, now: float) -> Done:
        decode_s = max(now - live.t_first, 1e-9)
        return Done(
            live.id,
            finish,
            usage={
                "prompt_tokens": live.prompt_tokens,
                "completion_tokens": live.completion_tokens,
                "cached_tokens": live.cached_tokens,
                "reasoning_tokens": live.thoughts.count if live.thoughts is not None else 0,
                **(live.tally.usage() if live.tally.steps else {}),
                **({"loop_cycle_tokens": live.loop[0], "loop_repeats": live.loop[1]} if live.loop else {}),
            },
            timings={
                "ttft_s": round(live.t_first - live.t_start, 6),
                "admit_s": round(max(live.t_admitted - live.t_start, 0.0), 6),
                "total_s": round(now - live.t_start, 6),
                "decode_tps": round((live.completion_tokens - 1) / decode_s, 3),
            },
            stop=live.text.matched if finish == "stop" else None,
            note=self._note(live, finish),
        )

    def _note(self, live: _Live, finish: str) -> str | None:
        cut = live.tools.cut if live.tools is not None else None
        if cut is None:
            return None
        why = "max_tokens ran out" if finish == "length" else f"the output ended ({finish})"
        return (
            f"{why} while the model was writing a tool call, so the incomplete call was left out "
            f"of the answer ({len(cut)} characters, starting {cut[:60]!r}); raise max_tokens to let it finish"
        )

    def _logprob_entry(self, token: int, logprobs: mx.array, top: int) -> dict[str, Any]:
        """OpenAI's per-token logprobs entry: the chosen token and the ``top`` most likely."""
        chosen: float = logprobs[token].item()  # type: ignore[assignment]
        entry = self._token_logprob(token, chosen)
        entry["top_logprobs"] = []
        if top > 0:
            ids = mx.argpartition(-logprobs, top - 1)[:top]
            vals = logprobs[ids]
            order = mx.argsort(-vals)
            top_ids: list[int] = ids[order].tolist()  # type: ignore[assignment]
            top_vals: list[float] = vals[order].tolist()  # type: ignore[assignment]
            for i, v in zip(top_ids, top_vals, strict=True):
                if v != float("-inf"):  # a token a grammar masked out is impossible, not a candidate
                    entry["top_logprobs"].append(self._token_logprob(int(i), float(v)))
        return entry

    def _token_logprob(self, token: int, logprob: float) -> dict[str, Any]:
        raw = self._token_bytes(token)
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    def _token_bytes(self, token: int) -> bytes:
        """A token's own bytes: for byte-level BPE, part of a character is just those bytes."""
        cached = self._bytes_cache.get(token)
        if cached is None:
            tok = self.m.tokenizer
            piece = tok.convert_ids_to_tokens(token)
            decoder = _byte_decoder()
            if isinstance(piece, str) and piece and all(c in decoder for c in piece):
                cached = bytes(decoder[c] for c in piece)
            else:
                cached = tok.decode([token]).encode("utf-8")
            self._bytes_cache[token] = cached
        return cached
