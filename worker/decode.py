"""Hearth's decode batch: continuous batching that verifies drafts (speculative decoding).

mlx-lm's ``BatchGenerator`` feeds every sequence one token per step, and has no way to feed a
sequence several tokens and take back the ones that were wrong. So with speculation on, a
sequence leaves the generator once its prompt is processed and its first token sampled (the
generator keeps doing what it is best at: chunked, batched prefill) and decodes here, beside
the others, in one forward pass per step over every row's next token plus its drafts:

- rows draft different numbers of tokens (ragged): the inputs are right-padded to the longest
  and, since attention is causal, a row's padding never reaches its real positions;
- each row then samples position after position with its own sampler and logits processors,
  exactly as it would without drafts, and keeps going while the sampled token is its draft.
  The output is what decoding without speculation gives: every token is a draw from the
  target model's (processed) distribution, and processors see the same tokens in the same
  order (sample-and-compare; a row of greedy rows is checked with one argmax);
- the KV cache keeps each row's accepted tokens: all rows are trimmed to the longest keep, and
  the positions a row rejected within it are masked out for that row
  (``worker.ragged_cache``), rather than copying the whole cache to shift rows into line.

A row without drafts (gated off, or ``"speculative": false``) is a plain decode step in the
same forward pass: the batch never falls back to one sequence at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from worker.lookup import PromptLookup
from worker.ragged_cache import RaggedCache
from worker.speculation import Gate, StepCost, Tally, draft_cap, may_pay, plan

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


@dataclass
class Token:
    """A generated token in the shape of mlx-lm's batch response."""

    uid: int
    token: int
    logprobs: mx.array | None  # over the vocabulary; None for a token replayed by a resume
    finish_reason: str | None
    all_tokens: list[int]  # with a finish: the tokens the returned cache holds
    prompt_cache: list[Any]


def can_verify(cache: Sequence[Any]) -> bool:
    """Drafts can be taken back only from plain KV caches (not rotating, quantized or
    recurrent-state ones): the models where every layer has one can speculate."""
    return bool(cache) and all(type(c) is KVCache for c in cache)


class _Context:
    """A row's tokens as one MLX array, for its logits processors (mlx-lm's ``TokenBuffer``
    with a look-ahead: drafts are written past the end without being committed)."""

    STEP = 256

    def __init__(self, tokens: list[int]) -> None:
        self._buf = mx.array(tokens + [0] * self.STEP, dtype=mx.int32)
        self.size = len(tokens)

    def fetch(self, ahead: list[int] | mx.array) -> mx.array:
        """The committed tokens followed by ``ahead`` (host ints, or an array still computing)."""
        end = self.size + len(ahead)
        if end > self._buf.size:
            grow = ((end - self._buf.size) // self.STEP + 1) * self.STEP
            self._buf = mx.concatenate([self._buf, mx.zeros(grow, dtype=mx.int32)])
        if len(ahead):
            self._buf[self.size : end] = mx.array(ahead, dtype=mx.int32)
        return self._buf[:end]

    def commit(self, tokens: list[int]) -> None:
        self.fetch(tokens)
        self.size += len(tokens)


@dataclass
class Row:
    """One sequence of the batch."""

    uid: int
    tokens: list[int]  # the tokens whose keys and values are in the cache, in order
    pending: int  # the next input: sampled and sent, not yet in the cache
    left: int  # tokens it may still generate
    sampler: Sampler
    processors: list[LogitsProcessor]
    greedy: bool  # its sampler is the shared argmax
    sequential: bool  # its sampler draws from a key of its own: one draw per token, in order
    lookup: PromptLookup | None  # its drafts' source with prompt lookup; None: it doesn't draft
    context: _Context | None = None
    gate: Gate = field(default_factory=Gate)
    tally: Tally = field(default_factory=Tally)
    draft_len: int = 0  # tokens of its history in the draft model's cache (worker.draft)
    speculate: bool = True  # False: the request opted out; it decodes a token a step
    logprobs: bool = False  # the request asked for log-probabilities
    # its last landed step gave what the step after it had assumed when launched early (all its
    # valid drafts accepted): that step's drafts, guessed on that assumption, are valid
    full: bool = True


class Drafter(Protocol):
    """Where drafts come from when they don't come from prompt lookup (a draft model)."""

    def add(self, row: Row) -> None: ...
    def remove(self, index: int) -> None: ...
    def propose(self, rows: list[Row], ks: list[int]) -> list[list[int]]: ...
    def accepted(self, rows: list[Row]) -> None: ...


@dataclass
class _Flight:
    """A step launched on the device and not yet landed: who was in it and what it verifies."""

    rows: list[Row]
    drafts: list[list[int]]
    width: int
    logits: mx.array
    argmax: mx.array | None  # greedy rows' picks, computed with the forward pass
    sampled: mx.array | None = None  # a plain step (no drafts): every row's token, sampled on the device
    logprobs: mx.array | None = None  # and their distributions (a plain step's)
    # decided on the device (a plain step, or greedy rows only: ``_accept_on_device``), so the
    # next step can launch before this one lands: each row's next input, whether it gave what
    # the host assumed, and (with drafts) the positions of this step it keeps
    nexts: mx.array | None = None
    full: mx.array | None = None
    keep: mx.array | None = None
    guesses: list[int] | None = None  # per row: the token its drafts assumed its input to be (-1: known)
    punched: bool = False  # its rejected positions are masked on the device (the next step is in flight)


class DecodeBatch:
    """Every decoding sequence of one worker, stepped together with their drafts verified.

    Steps are pipelined. A step with drafts is checked on the host, so ``step`` lands it (its
    tokens sampled and compared with the drafts, the cache trimmed), then launches the next on
    the device (``mx.async_eval``) and returns the landed tokens: the engine's per-token work
    (text, stop strings, the socket) runs while the device computes. A plain step (no row has
    drafts) samples on the device, so while no row would draft the next step is launched on its
    tokens before it lands, as mlx-lm's ``GenerationBatch`` does, and the device never waits for
    the host. Rows that leave meanwhile are dropped from what lands; rows that arrive join
    before the next launch.

    With ``chain_cost`` (``speculative_chain = true``: for a device where the wait for the host
    is what a step with drafts costs; measured no faster on the H200, so off by default), a
    batch of greedy rows without processors chains its steps with drafts too: the
    device decides each row's accepted drafts and next token (``_accept_on_device``), and the
    next step launches on them before this one lands, with drafts the host guessed by assuming
    this step accepts all of its own (``_launch_after``). A guess that fails costs that row its
    drafts for one step (the device masks them), never a token."""

    def __init__(
        self,
        model: Any,
        eos: set[int],
        draft_tokens: int,
        budget: int,
        keep_caches: bool,
        cost: StepCost,
        width: Callable[[int], int],
        drafter: Drafter | None = None,
        chain_cost: StepCost | None = None,
    ) -> None:
        self.model = model
        self.cost = cost  # what a step with drafts costs (worker.speculation.plan)
        self.chain_cost = chain_cost  # what a chained one costs; None: steps with drafts don't chain
        self.width = width  # the forward width a step with drafts runs at (shared.device.verify_width)
        self.eos = eos
        self.draft_tokens = draft_tokens
        self.budget = budget
        self.keep_caches = keep_caches  # a finished row's cache goes back for the prompt cache
        self.drafter = drafter
        self.rows: list[Row] = []
        self._joining: list[tuple[Row, list[Any]]] = []
        self._cache: RaggedCache | None = None
        self._flight: _Flight | None = None
        self._drafting = True  # whether the next launch looks for drafts (else it is plain, launched early)
        # the plan ``_would_draft`` made at the last landing, for the rows it planned (by identity):
        # the launch right after uses it instead of looking the drafts up again
        self._planned: tuple[list[int], tuple[list[int], list[list[int]] | None]] | None = None
        self.steps = 0
        self.chained = 0  # steps with drafts launched before the previous step landed

    def __len__(self) -> int:
        return len(self.rows) + len(self._joining)

    def __contains__(self, uid: int) -> bool:
        return any(r.uid == uid for r in self.rows) or any(r.uid == uid for r, _ in self._joining)

    # -- rows in and out ---------------------------------------------------------------------

    def add(self, row: Row, cache: list[Any]) -> None:
        """Take ``row`` in with its own cache (holding ``row.tokens``); it joins the next step."""
        if row.processors:
            row.context = _Context(row.tokens)
        self._joining.append((row, cache))

    def remove(self, uid: int) -> tuple[list[Any] | None, list[int]]:
        """Take a row out: its cache (when caches are kept) and the tokens it holds."""
        for j, (waiting, own) in enumerate(self._joining):
            if waiting.uid == uid:
                del self._joining[j]
                return (own if self.keep_caches else None), waiting.tokens
        index = next(i for i, r in enumerate(self.rows) if r.uid == uid)
        row = self.rows[index]
        cache = self._extract(index) if self.keep_caches else None
        self._drop([index])
        return cache, row.tokens

    def _extract(self, index: int) -> list[Any]:
        """Row ``index``'s cache, cut to its tokens (a step in flight wrote past them)."""
        assert self._cache is not None
        out = self._cache.extract(index)
        extra = (out[0].offset - len(self.rows[index].tokens)) if out else 0
        for c in out:
            if extra > 0:
                c.trim(extra)
        return out

    def _drop(self, indices: list[int]) -> None:
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        for i in sorted(gone, reverse=True):
            if self.drafter is not None:
                self.drafter.remove(i)
        self.rows = [self.rows[i] for i in keep]
        if keep and self._cache is not None:
            self._cache.filter(keep)
        else:
            self._cache = None

    # -- the step -----------------------------------------------------------------------------

    def _caps(self, rows: list[Row]) -> list[int]:
        cap = draft_cap(self.draft_tokens, self.budget, len(rows))
        return [min(cap, r.left - 1) if cap > 0 and self._may_draft(r) else 0 for r in rows]

    def _may_draft(self, r: Row) -> bool:
        return r.speculate and (r.lookup is not None or self.drafter is not None) and r.left > 1

    def _plan(self, rows: list[Row]) -> tuple[list[int], list[list[int]] | None]:
        """Each row's draft count for the next step (``speculation.plan``), and with prompt
        lookup the drafts themselves (a draft model proposes only once the plan says so)."""
        ks = self._caps(rows)
        rates = [r.gate.rate for r in rows]
        if not any(ks) or not may_pay(ks, rates, self.cost):
            return [0] * len(rows), [[] for _ in rows] if self.drafter is None else None
        if self.drafter is not None:
            return plan(ks, rates, self.cost), None
        props = [r.lookup.propose(k) if r.lookup is not None and k > 0 else [] for r, k in zip(rows, ks, strict=True)]
        ks = plan([len(p) for p in props], rates, self.cost)
        return ks, [p[:k] for p, k in zip(props, ks, strict=True)]

    def _drafts(self) -> list[list[int]]:
        planned, self._planned = self._planned, None
        if planned is not None and planned[0] == [id(r) for r in self.rows]:
            ks, drafts = planned[1]
        else:
            ks, drafts = self._plan(self.rows)
        if drafts is not None:
            return drafts
        if not any(ks):
            return [[] for _ in ks]
        assert self.drafter is not None
        return self.drafter.propose(self.rows, ks)

    def _would_draft(self) -> bool:
        """Whether the next step verifies drafts: then its launch waits for the landing."""
        rows = self.rows + [r for r, _ in self._joining]
        made = self._plan(rows)
        self._planned = ([id(r) for r in rows], made)
        return any(made[0])

    def warm(self, widths: list[int]) -> None:
        """Run a forward pass of each width over the rows and take it back: on a GPU, the
        kernels of the shapes steps with drafts will run compile now (the load-time warm-up)."""
        assert self._cache is not None
        for w in widths:
            mx.eval(self.model(mx.zeros((len(self.rows), w), dtype=mx.int32), cache=self._cache.layers))
            self._cache.trim(w)

    def step(self) -> list[tuple[int, list[Token]]]:
        """Land the step in flight and launch the next: the landed rows' accepted tokens (one
        at least), in order; the last of a finished row carries its finish reason (and its
        cache, when caches are kept)."""
        flight, self._flight = self._flight, None
        if flight is not None and flight.nexts is not None and not self._joining and self._chains():
            self._launch_after(flight)  # greedy rows: the device knows their next inputs
            return self._land(flight)
        if flight is not None and flight.sampled is not None and not self._drafting:
            self._join_arrivals()  # a plain step stays plain: launch on its tokens, then land it
            if self.rows:
                self._launch(flight)
            return self._land(flight)
        out = self._land(flight) if flight is not None else []
        self._join_arrivals()
        if self.rows:
            self._launch(None)
        return out

    def _chains(self) -> bool:
        """Whether the batch's steps with drafts chain: chaining is on and every row is greedy,
        without processors or log-probabilities (the device can then decide what it accepts)."""
        return (
            self.chain_cost is not None
            and self.drafter is None
            and all(r.greedy and not r.processors and not r.sequential and not r.logprobs for r in self.rows)
        )

    def _launch_after(self, before: _Flight) -> None:
        """Launch the next step before ``before`` lands: each row's drafts are what its prompt
        lookup proposes after the tokens ``before`` gives if it accepts all its valid drafts, the
        first proposed token being the guess of ``before``'s next token. No drafts worth their
        cost (``chain_cost``): a plain step, launched the same way."""
        index = self._index_in(before)
        # a row's lookup holds its tokens up to its pending one (``before``'s input): ahead of it,
        # the drafts ``before`` verifies for it, if they stand
        aheads = [before.drafts[i] if _valid(r, before, i) else [] for r, i in zip(self.rows, index)]
        guesses, drafts = self._guess(aheads)
        if not any(drafts):
            self._launch(before)
            return
        self._punch_early(before, index)
        pick = _picker(index, len(before.rows))
        assert before.nexts is not None and self._cache is not None
        x0 = pick(before.nexts).astype(mx.int32)
        width = self.width(1 + max(len(d) for d in drafts))
        rest = mx.array([d + [0] * (width - 1 - len(d)) for d in drafts], dtype=mx.int32)
        logits = self.model(mx.concatenate([x0[:, None], rest], axis=1), cache=self._cache.layers)
        self.steps += 1
        self.chained += 1
        g = mx.array(guesses, dtype=mx.int32)
        valid = (g < 0) | (x0 == g)
        if before.full is not None:
            valid = valid & pick(before.full)
        self._flight = self._accept_on_device(logits, drafts, width, valid, guesses)

    def _guess(self, aheads: list[list[int]]) -> tuple[list[int], list[list[int]]]:
        """Per row, assuming the step in flight accepts ``aheads[i]`` (its drafts that stand):
        the guess of the token after them (-1: none) and the drafts that would follow it, as
        many as ``chain_cost`` pays for (``speculation.plan``) and its ``max_tokens`` leaves
        room for after the step in flight's tokens."""
        rows, cost = self.rows, self.chain_cost
        assert cost is not None
        cap = draft_cap(self.draft_tokens, self.budget, len(rows))
        caps = [
            max(0, min(cap, r.left - (1 + len(a)) - 1)) if r.lookup is not None and r.speculate else 0
            for r, a in zip(rows, aheads, strict=True)
        ]
        rates = [r.gate.rate for r in rows]
        if not any(caps) or not may_pay(caps, rates, cost):
            return [-1] * len(rows), [[] for _ in rows]
        props = [
            r.lookup.propose(c + 1, a) if r.lookup is not None and c > 0 else []
            for r, a, c in zip(rows, aheads, caps, strict=True)
        ]
        ks = plan([max(len(p) - 1, 0) for p in props], rates, cost)
        guesses = [p[0] if k else -1 for p, k in zip(props, ks, strict=True)]
        return guesses, [p[1 : 1 + k] for p, k in zip(props, ks, strict=True)]

    def _index_in(self, before: _Flight) -> list[int]:
        """Where each row of the batch sits in ``before`` (every row was in it: none joined since)."""
        at = _positions(before)
        return [at[id(r)] for r in self.rows]

    def _punch_early(self, before: _Flight, index: list[int]) -> None:
        """Mask on the device the positions ``before`` rejects, as the device decided them:
        the next step launches before the host has seen them (``forget`` follows at landing)."""
        if before.keep is None or before.punched or before.width <= 1:
            return
        assert self._cache is not None
        self._cache.mask_last(before.width, _picker(index, len(before.rows))(before.keep))
        before.punched = True

    def _accept_on_device(
        self, logits: mx.array, drafts: list[list[int]], width: int, valid: mx.array | None, guesses: list[int] | None
    ) -> _Flight:
        """A step with drafts for greedy rows, its outcome decided on the device: per row, the
        leading drafts its argmax agrees with (none where ``valid`` says its drafts rest on a
        guess that failed), the token after them (its next input) and whether it gave all it
        was expected to; what the host's landing works out again from the picks (``_land``)."""
        argmax = mx.argmax(logits, axis=-1).astype(mx.int32)  # (rows, width)
        want = mx.array([d + [-1] * (width - 1 - len(d)) for d in drafts], dtype=mx.int32)
        run = mx.cumprod((argmax[:, :-1] == want).astype(mx.int32), axis=1).sum(axis=1)
        lengths = mx.array([len(d) for d in drafts], dtype=mx.int32)
        if valid is not None:
            run, lengths = mx.where(valid, run, 0), mx.where(valid, lengths, 0)
        nexts = mx.take_along_axis(argmax, run[:, None], axis=1)[:, 0]
        full, keep = run == lengths, run + 1
        mx.async_eval(argmax, nexts, full, keep)
        return _Flight(
            list(self.rows), drafts, width, logits, argmax, nexts=nexts, full=full, keep=keep, guesses=guesses
        )

    def _join_arrivals(self) -> None:
        """Every row that arrived since the last step joins the batch, all in one copy."""
        if not self._joining:
            return
        arrivals, self._joining = self._joining, []
        merged = RaggedCache.merge([cache for _, cache in arrivals])
        if not self.rows or self._cache is None:
            self._cache = merged
        else:
            self._cache.extend(merged)
        for row, _ in arrivals:
            self.rows.append(row)
            if self.drafter is not None:
                self.drafter.add(row)

    def _launch(self, before: _Flight | None) -> None:
        """Start the next step on the device: on ``before``'s tokens still computing (a plain
        step launched early), else on every row's known next token plus its drafts."""
        aheads: list[mx.array] | None = None
        if before is not None:
            drafts: list[list[int]] = [[] for _ in self.rows]
            if before.keep is not None:
                self._punch_early(before, self._index_in(before))
            inputs, aheads = self._early_inputs(before)
        else:
            drafts = self._drafts()
            longest = max(len(d) for d in drafts)
            width = self.width(1 + longest) if longest else 1
            inputs = mx.array([[r.pending, *d] + [0] * (width - 1 - len(d)) for r, d in zip(self.rows, drafts)])
        width = int(inputs.shape[1])
        assert self._cache is not None
        logits = self.model(inputs, cache=self._cache.layers)  # (rows, width, vocab)
        self.steps += 1
        if width == 1:  # plain: sample on the device, as mlx-lm's GenerationBatch does
            if aheads is None:
                aheads = [inputs[i, :1] for i in range(len(self.rows))]
            sampled, logprobs = self._sample_plain(logits[:, 0, :], aheads)
            mx.async_eval(sampled, logprobs)
            self._flight = _Flight(list(self.rows), drafts, 1, logits, None, sampled, logprobs, nexts=sampled)
            return
        if self._chains():
            self._flight = self._accept_on_device(logits, drafts, width, None, None)
            return
        greedy = any(r.greedy and not r.processors and not r.sequential for r in self.rows)
        argmax = mx.argmax(logits, axis=-1) if greedy else None
        mx.async_eval(argmax if argmax is not None else logits)
        self._flight = _Flight(list(self.rows), drafts, width, logits, argmax)

    def _early_inputs(self, before: _Flight) -> tuple[mx.array, list[mx.array]]:
        """The rows' next tokens for a step launched before ``before`` landed: its samples for
        the rows it had (those still here), the known next token of rows that joined since;
        and what each row's processors see after its committed tokens (``before``'s input,
        not committed until it lands, then this step's)."""
        at = _positions(before)
        sampled = before.nexts
        assert sampled is not None
        kept = [at[id(r)] for r in self.rows if id(r) in at]
        parts = [sampled[mx.array(kept)] if kept else mx.array([], dtype=sampled.dtype)]
        joined = [r.pending for r in self.rows if id(r) not in at]
        if joined:
            parts.append(mx.array(joined, dtype=sampled.dtype))
        inputs = mx.concatenate(parts)
        aheads = []
        for i, r in enumerate(self.rows):
            if id(r) in at:  # its pending token went in with ``before``
                aheads.append(mx.concatenate([mx.array([r.pending], dtype=sampled.dtype), inputs[i : i + 1]]))
            else:
                aheads.append(inputs[i : i + 1])
        return inputs[:, None], aheads

    def _sample_plain(self, logits: mx.array, aheads: list[mx.array]) -> tuple[mx.array, mx.array]:
        """Each row's next token, on the device: its processors (their context is its committed
        tokens and its ``aheads``, which may still be computing), then its sampler; one sampler
        call for rows that share one (mlx-lm's batch does the same)."""
        rows = self.rows
        if any(r.processors for r in rows):
            parts = []
            for i, r in enumerate(rows):
                x = logits[i : i + 1]
                if r.processors:
                    assert r.context is not None
                    ctx = r.context.fetch(aheads[i])
                    for p in r.processors:
                        x = p(ctx, x)
                parts.append(x)
            logits = mx.concatenate(parts, axis=0)
        logprobs = _normalized(logits, rows)
        first = rows[0].sampler
        if all(r.sampler is first for r in rows):
            return first(logprobs), logprobs
        return mx.concatenate([r.sampler(logprobs[i : i + 1]) for i, r in enumerate(rows)]), logprobs

    def _land(self, flight: _Flight) -> list[tuple[int, list[Token]]]:
        present = {id(r) for r in self.rows}
        landed = [i for i, r in enumerate(flight.rows) if id(r) in present]  # in the batch's order
        effective = flight.drafts  # the drafts each row verified (a failed guess's are void)
        if flight.sampled is not None:
            picks: list[int] = flight.sampled.tolist()  # type: ignore[assignment]
            assert flight.logprobs is not None
            sampled = [([picks[i]], [flight.logprobs[i]]) for i in landed]
        elif flight.keep is not None:  # decided on the device: the same walk over its picks
            effective = [d if _valid(r, flight, i) else [] for i, (r, d) in enumerate(zip(flight.rows, flight.drafts))]
            rows_picks: list[list[int]] = flight.argmax.tolist()  # type: ignore[union-attr,assignment]
            sampled = [_walk(rows_picks[i], effective[i], flight.logits[i]) for i in landed]
        else:
            sampled = self._sample(flight, landed)
        out: list[tuple[int, list[Token]]] = []
        keeps: list[int] = []
        held: list[int] = []  # positions of this step each row holds as the device masked them
        finished: list[int] = []
        for n, (i, (toks, lps)) in enumerate(zip(landed, sampled, strict=True)):
            row, d, drafted = flight.rows[i], effective[i], flight.drafts[i]
            tokens: list[Token] = []
            finish = None
            for j, t in enumerate(toks):
                row.left -= 1
                if t in self.eos:
                    finish = "stop"
                elif row.left <= 0:
                    finish = "length"
                tokens.append(Token(row.uid, t, lps[j], finish, [], []))
                if finish is not None:
                    break
            matched = len(toks) - 1  # sampling went along the drafts while they matched
            accepted = min(matched, len(tokens))  # drafts that stay in the cache (sent as tokens)
            keeps.append(1 + accepted)
            held.append(1 + matched)
            row.full = matched == len(d)
            row.tally.drafted += len(drafted)
            row.tally.accepted += matched
            row.tally.steps += 1
            row.gate.tick(bool(drafted))
            row.gate.record(len(drafted), matched)
            if not drafted and row.lookup is not None and self._may_draft(row):
                guess = row.lookup.propose(1)  # its history ends with this step's input
                if guess:
                    row.gate.observe(guess[0] == toks[0])
            kept = [row.pending, *d[:accepted]]
            row.tokens.extend(kept)
            if row.context is not None:
                row.context.commit(kept)
            if row.lookup is not None:
                row.lookup.extend(tokens_of(tokens) if finish is None else [])
            if finish is not None:
                finished.append(n)
            else:
                row.pending = tokens[-1].token
            out.append((row.uid, tokens))
        if not self.rows:
            return out
        if flight.punched:
            assert self._cache is not None
            self._cache.forget([flight.width - k for k in held])
        elif flight.width > 1:
            self._align(flight.width, keeps)
        if self.drafter is not None:
            self.drafter.accepted(self.rows)
        if finished:
            for n in finished:
                last = out[n][1][-1]
                last.all_tokens = self.rows[n].tokens
                last.prompt_cache = self._extract(n) if self.keep_caches else []
            self._drop(finished)
        # a batch that chains plans its next step when launching it, from the assumed tokens
        if self._chains() and not self._joining:
            self._drafting, self._planned = True, None
        else:
            self._drafting = self._would_draft()
        return out

    def _align(self, width: int, keeps: list[int]) -> None:
        """Keep each row's ``keeps`` first positions of this step: trim everyone to the
        longest keep, then mask out the rest of the rows that keep fewer."""
        assert self._cache is not None
        most = max(keeps)
        self._cache.trim(width - most)
        self._cache.punch([most - k for k in keeps])

    # -- sampling -----------------------------------------------------------------------------

    def _sample(self, flight: _Flight, landed: list[int]) -> list[tuple[list[int], list[Any]]]:
        """Per landed row: the tokens it samples along its drafts (up to and including the
        first that differs from its draft, or one past its last draft), with their
        log-probabilities."""
        rows, drafts, logits = flight.rows, flight.drafts, flight.logits
        results: dict[int, tuple[list[int], list[Any]]] = {}
        plain = [i for i in landed if not rows[i].processors and not rows[i].sequential]
        logprobs = _normalized(logits, [rows[i] for i in plain])
        if plain:
            greedy = [i for i in plain if rows[i].greedy]
            batched = [i for i in plain if not rows[i].greedy]
            draws = [rows[i].sampler(logprobs[i, : 1 + len(drafts[i])]) for i in batched]
            mx.eval([a for a in (flight.argmax if greedy else None, *draws) if a is not None])
            picks: list[list[int]] = flight.argmax.tolist() if greedy else []  # type: ignore[union-attr,assignment]
            for i in greedy:
                results[i] = _walk(picks[i], drafts[i], logprobs[i])
            for i, drawn in zip(batched, draws, strict=True):
                results[i] = _walk(drawn.tolist(), drafts[i], logprobs[i])  # type: ignore[arg-type]
        for i in landed:
            if i not in results:
                results[i] = self._sample_in_order(rows[i], logits[i], drafts[i])
        return [results[i] for i in landed]

    def _sample_in_order(self, row: Row, logits: mx.array, draft: list[int]) -> tuple[list[int], list[Any]]:
        """Position by position, as decoding without drafts would: processors see the row's
        tokens with the accepted drafts, and a seeded sampler makes one draw per token."""
        tokens: list[int] = []
        lps: list[Any] = []
        for j in range(1 + len(draft)):
            x = logits[j : j + 1]
            if row.processors:
                assert row.context is not None
                ctx = row.context.fetch([row.pending, *draft[:j]])
                for p in row.processors:
                    x = p(ctx, x)
            lp = x - mx.logsumexp(x, axis=-1, keepdims=True)
            t: int = row.sampler(lp).item()  # type: ignore[assignment]
            tokens.append(t)
            lps.append(lp[0])
            if j >= len(draft) or t != draft[j]:
                break
        return tokens, lps


def _normalized(logits: mx.array, rows: list[Row]) -> mx.array:
    """The log-probabilities of ``logits`` when a row uses them (a sampler other than the
    argmax, or a request for logprobs); with none, the logits as they are, which pick the same
    tokens. The normalisation is an ``exp`` over the vocabulary at every position: on the CPU,
    4 ms of an 88 ms step of 8 SmolLM2 rows, 16 ms when each row verifies 3 drafts."""
    if all(r.greedy and not r.logprobs for r in rows):
        return logits
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def _walk(picks: list[int], draft: list[int], logprobs: mx.array) -> tuple[list[int], list[Any]]:
    """The sampled tokens a row keeps: along its drafts while they match, then the first
    that differs (or the one after its last draft)."""
    n = 0
    while n < len(draft) and picks[n] == draft[n]:
        n += 1
    return picks[: n + 1], [logprobs[j] for j in range(n + 1)]


def _valid(row: Row, flight: _Flight, i: int) -> bool:
    """Whether row ``i``'s drafts in ``flight`` stand: they were drafted from known tokens, or
    from a guess of its input that came true after a step that gave all it was expected to
    (``row.full`` and ``row.pending`` are that step's, landed just before)."""
    g = -1 if flight.guesses is None else flight.guesses[i]
    return g < 0 or (row.full and row.pending == g)


def _positions(flight: _Flight) -> dict[int, int]:
    """Each of ``flight``'s rows (by identity) and its index in the flight."""
    return {id(r): i for i, r in enumerate(flight.rows)}


def _picker(index: list[int], n: int) -> Callable[[mx.array], mx.array]:
    """Take rows ``index`` of a flight's per-row arrays (all of them, in order: as they are)."""
    if index == list(range(n)):
        return lambda a: a
    at = mx.array(index, dtype=mx.int32)
    return lambda a: a[at]


def tokens_of(tokens: list[Token]) -> list[int]:
    return [t.token for t in tokens]
