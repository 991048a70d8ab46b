"""Constrained decoding in the batch: an llguidance matcher as a request's logits processor.

Per model, llguidance's tokenizer adapter is built once (``GrammarTokenizer``, at the load-time
self-check). Per request, a ``Constraint`` holds a matcher for its grammar (``shared.grammar``
builds response formats; ``tool_grammar`` here builds the tool-call grammars) and is appended
to that request's mlx-lm logits processors, so a constrained request decodes in the same batch
step as unconstrained ones: only its own row is masked.

Each step the processor (1) starts the step's forward pass on the device (``mx.async_eval``),
(2) reads the token sampled last step and advances the matcher with it, (3) fills the next
token bitmask on the CPU while the device computes the logits, and (4) applies the mask with
plain ``mx`` ops (llguidance's own MLX helper is a Metal kernel; these run on every backend).
So the mask's CPU time overlaps the forward pass instead of adding to it. Once the grammar is
complete (the matcher is stopped) the mask admits only end-of-sequence tokens, so the output
ends with ``finish_reason`` ``stop``.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Sequence
from typing import Any

import llguidance
import llguidance.numpy as llg_np
import mlx.core as mx
import numpy as np

from shared.grammar import GrammarError, tool_schema
from worker.toolcalls import ToolSyntax
from worker.toolformats import answer_grammar

GENERIC_MARKER = '{"tool_call": '  # how a generic-format call opens: the whole answer is the call object


class GrammarTokenizer:
    """llguidance's view of one model's vocabulary (built once per model: ~1 s for 49k tokens)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        backend = copy.copy(tokenizer.backend_tokenizer)  # the HF fast tokenizer's Rust tokenizer
        backend.no_padding()
        backend.no_truncation()
        self.eos = sorted(int(t) for t in tokenizer.eos_token_ids)
        self.vocab_size = vocab_size
        self.ll = llguidance.LLTokenizer(backend.to_str(), n_vocab=vocab_size, eos_token=self.eos)
        words = (vocab_size + 31) // 32
        self.shifts = mx.arange(32, dtype=mx.uint32)
        eos_mask = np.zeros((1, words), dtype=np.uint32)
        for t in self.eos:
            eos_mask[0, t // 32] |= np.uint32(1 << (t % 32))
        self.eos_mask = eos_mask.view(np.int32)  # the mask when a matcher failed: end the output
        self.grammars: dict[tuple[str, str, str, bool], str | None] = {}  # tool grammars (tool_grammar)
        self._matchers: dict[str, Any] = {}  # grammar -> a fresh matcher, copied for each request

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher for ``grammar``: building one for a dozen tools takes milliseconds,
        copying a built one microseconds, and agents send the same grammar every turn."""
        template = self._matchers.get(grammar)
        if template is None:
            template = llguidance.LLMatcher(self.ll, grammar, log_level=0)
            if template.is_error():
                return template  # not kept: the caller reports the error
            if len(self._matchers) >= 64:
                self._matchers.clear()
            self._matchers[grammar] = template
        return template.deep_copy()

    def seq(self, text: str) -> str:
        """``text`` as a Lark expression: each special token inside it by id, the rest as
        literals (llguidance's byte-level text never matches a special token)."""
        parts: list[str] = []
        run: list[int] = []
        for t in self.ll.tokenize_str(text):
            if self.ll.is_special_token(t):
                if run:
                    parts.append(_lit(self.ll.decode_str(run)))
                    run = []
                parts.append(f"<[{t}]>")
            else:
                run.append(t)
        if run:
            parts.append(_lit(self.ll.decode_str(run)))
        return " ".join(parts) if parts else '""'

    def opening_special(self, text: str) -> int | None:
        """The special token ``text`` opens with, if it does (a marker such as ``<tool_call>``)."""
        ids = self.ll.tokenize_str(text)
        return ids[0] if ids and self.ll.is_special_token(ids[0]) else None

    def is_special(self, text: str) -> bool:
        """Whether ``text`` is one special token (a marker the grammar must name as a token)."""
        ids = self.ll.tokenize_str(text)
        return len(ids) == 1 and self.ll.is_special_token(ids[0])


_LOCK = threading.Lock()


class NoGrammarTokenizer(GrammarError):
    """llguidance can't read this model's tokenizer (not a fast tokenizer, say)."""


def grammar_tokenizer(loaded: Any) -> GrammarTokenizer:
    """The model's adapter, built on first use (the load-time self-check) and kept on the loaded
    model; a tokenizer llguidance can't take makes constrained requests a 400, not a failed load."""
    with _LOCK:
        cached = loaded.grammar_tokenizer
        if cached is None:
            try:
                cached = GrammarTokenizer(loaded.tokenizer, loaded.vocab_size)
            except Exception as e:  # whatever the tokenizer or llguidance raise
                cached = f"constrained decoding is not available for this model's tokenizer: {type(e).__name__}: {e}"
            loaded.grammar_tokenizer = cached
        if isinstance(cached, str):
            raise NoGrammarTokenizer("response_format", cached)
        return cached


class Constraint:
    """One request's grammar as an mlx-lm logits processor ``(tokens, logits) -> logits``.

    The first call sees the prompt as its context; every later call sees the tokens sampled
    since, and feeds them to the matcher before masking. ``prefill`` are tokens the prompt
    already ends with that belong to the grammar (a tool call's opening). ``stateful``: a resumed
    generation replays the calls it had (``worker.resume.fast_forward``) to bring the matcher on."""

    stateful = True

    def __init__(self, tok: GrammarTokenizer, grammar: str, param: str, prefill: Sequence[int] = ()) -> None:
        self.tok = tok
        self.matcher = tok.matcher(grammar)
        if self.matcher.is_error():
            raise GrammarError(param, self.matcher.get_error())
        if prefill and not self.matcher.consume_tokens(list(prefill)):
            raise GrammarError(param, f"the grammar refuses the call opening: {self.matcher.get_error()}")
        self.mask = llg_np.allocate_token_bitmask(1, tok.vocab_size)
        self.error: str | None = None  # set if the matcher refused a token: the request fails
        self._seen = -1  # context length at the last call

    @property
    def accepting(self) -> bool:
        return bool(self.matcher.is_accepting())

    def _consume(self, new: list[int]) -> None:
        for t in new:
            if self.error is not None:
                return
            if t in self.tok.eos and self.matcher.is_accepting():
                continue  # the end of the output: the step after it still runs (mlx-lm's pipelining)
            if not self.matcher.consume_token(t):
                self.error = self.matcher.get_error() or f"the grammar refused token {t}"

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        mx.async_eval(logits)  # the forward pass runs on the device while the mask is computed here
        n = int(tokens.shape[0])
        if self._seen >= 0 and n > self._seen:
            new: list[int] = tokens[self._seen :].tolist()  # type: ignore[assignment]
            self._consume(new)
        self._seen = n
        if self.error is None:
            llg_np.fill_next_token_bitmask(self.matcher, self.mask, 0)
            if self.matcher.is_error():
                self.error = self.matcher.get_error()
        words = self.mask if self.error is None else self.tok.eos_mask
        bits = (mx.array(words.view(np.uint32))[..., None] >> self.tok.shifts) & 1
        allowed = bits.reshape(1, -1)[:, : logits.shape[-1]].astype(mx.bool_)
        return mx.where(allowed, logits, mx.array(-mx.inf, dtype=logits.dtype))


# -- tool-call grammars (llguidance's Lark dialect) -------------------------------------------


def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _functions(tools: list[dict[str, Any]], only: str | None) -> str:
    """``{"name": "NAME", "arguments": ARGS}`` for each offered function (or just ``only``),
    the arguments held to that function's parameters schema."""
    alts = []
    for t in tools:
        fn = t.get("function") or {}
        name = fn.get("name")
        if not isinstance(name, str) or (only is not None and name != only):
            continue
        try:
            schema = tool_schema(fn.get("parameters"))
        except GrammarError as e:
            raise GrammarError("tools", f"function {name!r}: parameters: {e.detail}") from None
        head = _lit('{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": ')
        alts.append(f'{head} %json {json.dumps(schema, ensure_ascii=False)} "}}"')
    if not alts:
        raise GrammarError("tool_choice", f"no offered function is named {only!r}")
    return " | ".join(f"({a})" for a in alts)


def _marker(tok: GrammarTokenizer, text: str) -> str:
    """A marker in a rule: a special token by name, else its text."""
    return text if tok.is_special(text) else _lit(text)


def _free(tok: GrammarTokenizer, *markers: str) -> str:
    """Free output up to a special-token marker, at the token level: any tokens but the
    markers and end-of-sequence (text the model writes, special tokens of its own included, as
    without a grammar; llguidance's byte-level text never matches a special token)."""
    ids = sorted({*tok.eos, *(i for m in markers for i in tok.ll.tokenize_str(m))})
    return f"<[^{','.join(str(i) for i in ids)}]>*"


def tool_grammar(
    tok: GrammarTokenizer, syntax: ToolSyntax, tools: list[dict[str, Any]], choice: Any, parallel: bool
) -> str | None:
    """``_tool_grammar``, cached per model: an agent offers the same tools on every turn, and
    checking each schema compiles costs milliseconds."""
    key = (syntax.name, json.dumps(tools), json.dumps(choice), parallel)
    if key not in tok.grammars:
        if len(tok.grammars) >= 64:
            tok.grammars.clear()
        tok.grammars[key] = _tool_grammar(tok, syntax, tools, choice, parallel)
    return tok.grammars[key]


def _tool_grammar(
    tok: GrammarTokenizer,
    syntax: ToolSyntax,
    tools: list[dict[str, Any]],
    choice: Any,
    parallel: bool,
) -> str | None:
    """The grammar of a whole answer when ``tools`` are offered; None when Hearth has no
    argument grammar for this tool-call format or can't hold a schema in it faithfully (its
    calls are then parsed, not constrained). Native formats: ``worker.toolformats``.

    ``choice`` "auto": free text with calls; "required" / {"name"}: the answer opens with a
    call (of that function). ``parallel`` False: at most one call, then the answer ends."""
    only = choice.get("name") if isinstance(choice, dict) else None
    forced = choice == "required" or only is not None
    if syntax.name == "generic":
        text = r'TEXT: /(.|\n)*/ & ~/(.|\n)*\{"tool_call"(.|\n)*/'
        call = f'call: {_lit(GENERIC_MARKER)} ({_functions(tools, only)}) "}}"'
        start = "start: call" if forced else "start: call | TEXT"
        return llguidance.LLMatcher.grammar_from_lark("\n".join([start, call, text]))
    return answer_grammar(tok, syntax, tools, choice, parallel)


def with_reasoning(tok: GrammarTokenizer, grammar: str, start: str, end: str, inside: bool) -> str:
    """``grammar`` after a reasoning model's free reasoning block: ``START … END`` first, if the
    model writes one (``inside``: the prompt already opened it, so the answer begins in it and
    must close it). The format holds only the answer, never the reasoning."""
    text = grammar.lstrip()
    # llguidance's grammar text: a JSON list of grammars, or (grammar_from_lark) one Lark grammar
    subs = list(json.loads(text)["grammars"]) if text.startswith("{") else [{"lark_grammar": grammar}]
    subs[0] = {**subs[0], "name": "hearth_answer"}
    if tok.is_special(end):
        closing = f"closing: {_free(tok, end)} {end}"
    else:
        closing = f"closing[lazy]: THINK {_lit(end)}"
    block = "closing" if inside else f"({_marker(tok, start)} closing)?"
    top = "\n".join([f"start: {block} GAP @hearth_answer", closing, "THINK: /(.|\\n)*/", "GAP: /[ \\n]{0,4}/"])
    return json.dumps({"grammars": [{"lark_grammar": top}, *subs]})


def parse_generic(body: str, tools: Any = None) -> Any:
    """A generic-format call's text after its opening marker: ``{"name", "arguments"}}``."""
    return json.loads(GENERIC_MARKER + body)["tool_call"]


GENERIC = ToolSyntax("generic", GENERIC_MARKER, "", parse_generic)
