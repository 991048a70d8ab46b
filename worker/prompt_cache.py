"""The worker's KV prompt cache: reuse the longest cached prefix of a new prompt.

Agents and chat clients resend the whole conversation every turn; recomputing its KV cache is
most of the time to first token on a CPU. When a sequence finishes (or is stopped or cancelled),
its KV cache and the tokens it holds go into mlx-lm's ``LRUPromptCache`` (a token trie with an
LRU bounded in entries and bytes); a new prompt starts from the nearest cached prefix, trimmed
where the conversation diverged, and only the rest is prefilled.

System prompts (an agent's instructions and tools) are shared by every conversation, so they
get a trie of their own: mlx-lm drops a cached prefix as soon as a longer entry holding it is
stored, and conversation entries come and go; the system trie (a quarter of the budget) is only
evicted by other system prompts, so a shared system prompt stays warm however many
conversations pass through.

Warm restarts: ``save`` writes the hottest entries (system prompts first, then the most
recently used conversations) with mlx-lm's ``save_prompt_cache`` under a byte budget; a new
worker for the same model ``load``s them, so the first request after a restart is warm.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import orjson
from mlx_lm.models.cache import (
    KVCache,
    LRUPromptCache,
    can_trim_prompt_cache,
    load_prompt_cache,
    save_prompt_cache,
    trim_prompt_cache,
)

log = logging.getLogger("hearth.worker.cache")

_KEY = "model"  # one model per worker: the trie's model key is a constant
SYSTEM = "system"
CONVERSATION = "assistant"  # mlx-lm's name for a whole-conversation entry
_SUFFIX = ".safetensors"


class PromptCacheInternalsError(RuntimeError):
    """The installed mlx-lm's LRUPromptCache no longer has what warm restarts read."""


class PromptCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        sys_entries = max(1, max_entries // 4)
        sys_bytes = max_bytes // 4
        self._conv = LRUPromptCache(max_size=max(1, max_entries - sys_entries), max_bytes=max_bytes - sys_bytes)
        self._system = LRUPromptCache(max_size=sys_entries, max_bytes=sys_bytes)
        # tokens per stored entry, keyed by the entry's first layer cache: when mlx-lm evicts an
        # entry its cache objects go, and so does the key (no reading of mlx-lm's internals)
        self._held: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def lookup(self, tokens: Sequence[int], system_len: int = 0) -> tuple[list[Any] | None, int]:
        """A private copy of the nearest cache and how many leading tokens of ``tokens`` it holds;
        at least one token is always left to prefill (the batch needs one to start from).
        ``system_len``: the length of the prompt's system part, worth a look in the system trie
        when the conversations hold less of this prompt."""
        toks = list(tokens)
        cache, held = _fetch(self._conv, toks)
        if held < system_len:
            sys_cache, sys_held = _fetch(self._system, toks)
            if sys_held > held:
                cache, held = sys_cache, sys_held
        return cache, held

    def store(self, tokens: Sequence[int], cache: list[Any] | None, kind: str = CONVERSATION) -> None:
        """Keep ``cache`` (the KV of ``tokens``). Its evaluation is started here: a sequence's
        cache taken out of the batch is a lazy copy of a slice of the whole batch's KV buffers
        (mlx-lm's ``BatchKVCache.extract``), and kept unevaluated it would hold those buffers
        alive, every sequence's and every step's preallocation, while counting only its own
        bytes (measured: MLX active memory 4x the prompt cache's bytes on the tiny model, 800 MB
        beyond weights and cache on SmolLM2; docs/operations.md, Worker memory). Started, not
        waited for (``async_eval``): the copy runs on the device after the step in flight, and
        the step thread, which stores every finished sequence's cache, goes on building the next
        step instead of waiting for a few dozen small copies per finish."""
        if cache and tokens:
            mx.async_eval([c.state for c in cache])
            target = self._system if kind == SYSTEM else self._conv
            target.insert_cache(_KEY, list(tokens), cache, cache_type=kind)
            self._held[cache[0]] = len(tokens)

    def trim(self, keep_bytes: int) -> int:
        """Drop least recently used entries until at most ``keep_bytes`` stay, conversations
        before system prompts (the memory ceiling's trim); the bytes freed."""
        before = self.nbytes
        self._conv.trim_to(n_bytes=max(0, keep_bytes - self._system.nbytes))
        self._system.trim_to(n_bytes=max(0, keep_bytes - self._conv.nbytes))
        return before - self.nbytes

    @property
    def nbytes(self) -> int:
        return int(self._conv.nbytes + self._system.nbytes)

    @property
    def ntokens(self) -> int:
        """Tokens held by every entry (a prefix shared by two entries counts twice)."""
        return sum(self._held.values())

    def __len__(self) -> int:
        return len(self._conv) + len(self._system)

    # -- warm restarts ----------------------------------------------------------------------

    @staticmethod
    def check_internals() -> None:
        """Warm restarts read mlx-lm's LRU order and trie (``_entries``: mlx-lm has no public way
        to list its entries). The worker's load-time self-check calls this, so an mlx-lm upgrade
        that changes them fails at load, naming them, instead of at the first drain."""
        probe, layer = PromptCache(4, 1 << 20), KVCache()
        layer.update_and_fetch(mx.zeros((1, 1, 3, 2)), mx.zeros((1, 1, 3, 2)))
        probe.store([1, 2, 3], [layer])
        try:
            entries = probe._entries()
        except (AttributeError, KeyError, TypeError) as e:
            raise PromptCacheInternalsError(
                f"mlx-lm's LRUPromptCache._lru._lrus / ._trie changed ({type(e).__name__}: {e}); "
                "warm restarts (saving the prompt cache) need them"
            ) from None
        if [(kind, toks) for kind, toks, _ in entries] != [(CONVERSATION, [1, 2, 3])]:
            raise PromptCacheInternalsError(f"mlx-lm's LRUPromptCache order reads back wrong: {entries!r}")

    def _entries(self) -> list[tuple[str, list[int], list[Any]]]:
        """(kind, tokens, cache), hottest first: system prompts, then conversations, most
        recently used first. Reads mlx-lm's LRU order (``CacheOrder``); only at drain (saving),
        never per step or heartbeat, and checked at load (``check_internals``)."""
        out = []
        for kind, lru in ((SYSTEM, self._system), (CONVERSATION, self._conv)):
            for order in lru._lru._lrus.values():
                for model, toks in reversed(order):
                    out.append((kind, list(toks), lru._trie.get(model, toks).prompt_cache))
        return out

    def save(self, folder: Path, budget: int) -> int:
        """Write the hottest entries into ``folder`` (one file each, named by their tokens) until
        ``budget`` bytes; older files beyond the budget are removed. Returns entries written."""
        folder.mkdir(parents=True, exist_ok=True)
        used = written = 0
        keep: set[str] = set()
        for kind, toks, cache in self._entries():
            size = sum(c.nbytes for c in cache)
            if used + size > budget:
                continue
            name = hashlib.sha256(orjson.dumps(toks)).hexdigest()[:32] + _SUFFIX
            tmp = folder / f".{name}.{os.getpid()}.tmp{_SUFFIX}"
            try:
                save_prompt_cache(str(tmp), cache, {"tokens": orjson.dumps(toks).decode(), "kind": kind})
                os.replace(tmp, folder / name)
            except Exception as e:  # a cache that can't be saved is only a cold start later
                log.warning("could not save a prompt cache entry: %s", e)
                tmp.unlink(missing_ok=True)
                continue
            used += size
            written += 1
            keep.add(name)
        _prune(folder, keep, budget)
        return written

    def load(self, folder: Path, budget: int) -> int:
        """Take in the entries a previous worker of this model saved (newest first, within
        ``budget`` bytes). A file that does not load is skipped and removed."""
        if not folder.is_dir():
            return 0
        files = sorted(folder.glob("*" + _SUFFIX), key=_mtime, reverse=True)
        used = 0
        chosen: list[tuple[str, list[int], list[Any]]] = []
        for f in files:
            if f.name.startswith("."):
                continue
            try:
                cache, meta = load_prompt_cache(str(f), return_metadata=True)
                mx.eval([c.state for c in cache])  # read now: lazy arrays belong to this (loader) thread
                toks = orjson.loads(meta["tokens"])
                kind = meta.get("kind", CONVERSATION)
            except Exception as e:
                log.warning("dropping unreadable prompt cache file %s: %s", f.name, e)
                f.unlink(missing_ok=True)
                continue
            size = sum(c.nbytes for c in cache)
            if used + size <= budget:
                used += size
                chosen.append((kind, toks, cache))
        for kind, toks, cache in reversed(chosen):  # the newest become the most recently used
            self.store(toks, cache, kind)
        return len(chosen)


def _fetch(lru: LRUPromptCache, tokens: list[int]) -> tuple[list[Any] | None, int]:
    cache, rest = lru.fetch_nearest_cache(_KEY, tokens)
    if cache is None:
        return None, 0
    if not rest:
        if not can_trim_prompt_cache(cache):
            return None, 0
        trim_prompt_cache(cache, 1)
        rest = tokens[-1:]
    return cache, len(tokens) - len(rest)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _prune(folder: Path, keep: set[str], budget: int) -> None:
    """Remove files other than ``keep`` (stale entries, other replicas' older saves) beyond the
    byte budget, oldest first; temp files older than a minute are leftovers of a crash."""
    used = sum(_size(folder / n) for n in keep)
    for f in sorted(folder.glob("*" + _SUFFIX), key=_mtime, reverse=True):
        if f.name in keep:
            continue
        if f.name.startswith("."):
            if time.time() - _mtime(f) > 60:
                f.unlink(missing_ok=True)
            continue
        size = _size(f)
        if used + size > budget:
            f.unlink(missing_ok=True)
        else:
            used += size


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0
