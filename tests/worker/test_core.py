"""The engine core in-process (no sockets): batching, cancel, context limits, the self-check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shared.config import ModelConfig
from shared.protocol import Delta, Done, Error, Generate


@pytest.fixture(scope="module")
def core(tiny_model: Path):  # type: ignore[no-untyped-def]
    from worker.core import EngineCore
    from worker.model import load_model

    cfg = ModelConfig(name="tiny", path=str(tiny_model), max_batch=4)
    return EngineCore(load_model(cfg), cfg)


def gen(rid: str, **params: object) -> Generate:
    return Generate(
        id=rid,
        model="tiny",
        input={"messages": [{"role": "user", "content": rid}]},
        params={"temperature": 0, **params},
    )


def run(core, *reqs: Generate, steps: int = 500) -> list:  # type: ignore[no-untyped-def]
    events = [e for r in reqs for e in core.add(r)]
    for _ in range(steps):
        if not core.has_work:
            break
        events += core.step()
    return events


def test_batched_requests_each_finish_with_their_own_usage(core) -> None:  # type: ignore[no-untyped-def]
    events = run(core, gen("a", max_tokens=5), gen("b", max_tokens=9), gen("c", max_tokens=1))
    done = {e.id: e for e in events if isinstance(e, Done)}
    assert {k: d.usage["completion_tokens"] for k, d in done.items()} == {"a": 5, "b": 9, "c": 1}
    assert all(d.finish_reason == "length" for d in done.values())
    deltas = [e for e in events if isinstance(e, Delta) and e.id == "b"]
    assert deltas and deltas[-1].tokens <= 9
    assert not core.has_work


def test_same_request_alone_and_batched_gives_the_same_text(core) -> None:  # type: ignore[no-untyped-def]
    alone = "".join(e.text for e in run(core, gen("x", max_tokens=12)) if isinstance(e, Delta))
    mixed = run(core, gen("x", max_tokens=12), gen("y", max_tokens=20), gen("z", max_tokens=3))
    assert "".join(e.text for e in mixed if isinstance(e, Delta) and e.id == "x") == alone


def test_cancel_frees_the_sequence_at_once(core) -> None:  # type: ignore[no-untyped-def]
    core.add(gen("long", max_tokens=10_000))
    for _ in range(3):
        core.step()
    assert core.running == 1
    core.cancel("long")
    assert not core.has_work and core.running == 0
    assert run(core, gen("next", max_tokens=2))[-1].finish_reason == "length"


def test_prompt_longer_than_the_context_is_refused_with_both_counts(core) -> None:  # type: ignore[no-untyped-def]
    ctx = core.m.context_length
    (err,) = core.add(Generate(id="big", model="tiny", input={"tokens": [5] * (ctx + 10)}, params={}))
    assert isinstance(err, Error) and err.code == "context_length_exceeded"
    assert str(ctx + 10) in err.message and str(ctx) in err.message


def test_max_tokens_is_clamped_to_what_the_context_leaves(core, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(core.m, "context_length", 64)  # a short context keeps the prefill quick
    ctx = core.m.context_length
    events = run(
        core,
        Generate(
            id="full", model="tiny", input={"tokens": [5] * (ctx - 3)}, params={"max_tokens": 10**6, "temperature": 0}
        ),
    )
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "length"
    assert done.usage["prompt_tokens"] + done.usage["completion_tokens"] == ctx


def test_self_check_passes_on_this_mlx_lm(core) -> None:  # type: ignore[no-untyped-def]
    from worker.selfcheck import self_check

    self_check(core)
    assert not core.has_work and core.broken is None


def test_self_check_names_a_parameter_mlx_lm_no_longer_takes(core, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Simulate an mlx-lm upgrade that renamed a keyword of make_logits_processors."""
    import worker.sampling as sampling
    from worker.selfcheck import SelfCheckError, self_check

    real = sampling.make_logits_processors

    def renamed(*, repetition_penalty=None, **kw):  # type: ignore[no-untyped-def]
        if repetition_penalty is not None:
            raise TypeError("make_logits_processors() got an unexpected keyword argument 'repetition_penalty'")
        return real(**kw)

    monkeypatch.setattr(sampling, "make_logits_processors", renamed)
    with pytest.raises(SelfCheckError, match="repetition_penalty"):
        self_check(core)


# -- the KV prompt cache ----------------------------------------------------------------------


def _text(events: list, rid: str) -> str:  # type: ignore[type-arg]
    return "".join(e.text for e in events if isinstance(e, Delta) and e.id == rid)


def _uncached(core, req: Generate) -> str:  # type: ignore[no-untyped-def]
    saved, core.prompt_cache = core.prompt_cache, None
    try:
        return _text(run(core, req), req.id)
    finally:
        core.prompt_cache = saved


def chat_req(rid: str, messages: list[dict[str, str]], **params: object) -> Generate:
    return Generate(id=rid, model="tiny", input={"messages": messages}, params={"temperature": 0, **params})


def test_a_repeated_prompt_is_served_from_the_cache_with_the_same_answer(core) -> None:  # type: ignore[no-untyped-def]
    msgs = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 20}]
    first = run(core, chat_req("p1", msgs, max_tokens=12))
    second = run(core, chat_req("p2", msgs, max_tokens=12))
    d1, d2 = first[-1], second[-1]
    assert d2.usage["cached_tokens"] == d2.usage["prompt_tokens"] - 1
    assert d1.usage["cached_tokens"] < d2.usage["cached_tokens"]
    assert _text(second, "p2") == _text(first, "p1") == _uncached(core, chat_req("p3", msgs, max_tokens=12))


def test_the_next_turn_of_a_conversation_reuses_the_previous_one(core) -> None:  # type: ignore[no-untyped-def]
    turn1 = [{"role": "user", "content": "Tell me about Paris and Köln. " * 10}]
    events = run(core, chat_req("t1", turn1, max_tokens=16))
    done1 = events[-1]
    turn2 = turn1 + [
        {"role": "assistant", "content": _text(events, "t1")},
        {"role": "user", "content": "And Tokyo?"},
    ]
    events2 = run(core, chat_req("t2", turn2, max_tokens=16))
    assert events2[-1].usage["cached_tokens"] >= done1.usage["prompt_tokens"]
    assert _text(events2, "t2") == _uncached(core, chat_req("t3", turn2, max_tokens=16))


def test_a_diverging_prompt_reuses_the_common_prefix(core) -> None:  # type: ignore[no-untyped-def]
    base = "def hello(name):\n    return f'Hello, {name}!'\n" * 12
    run(
        core,
        Generate(
            id="d1",
            model="tiny",
            input={"prompt": base + "print(hello('a'))"},
            params={"temperature": 0, "max_tokens": 4},
        ),
    )
    other = Generate(
        id="d2", model="tiny", input={"prompt": base + "x = 1"}, params={"temperature": 0, "max_tokens": 10}
    )
    events = run(core, other)
    cached = events[-1].usage["cached_tokens"]
    assert 0 < cached < events[-1].usage["prompt_tokens"]
    assert _text(events, "d2") == _uncached(
        core, Generate(id="d3", model="tiny", input=other.input, params=other.params)
    )


def test_a_cancelled_request_leaves_its_prompt_in_the_cache(core) -> None:  # type: ignore[no-untyped-def]
    msgs = [{"role": "user", "content": "Cancel me, a long prompt about nothing much. " * 15}]
    core.add(chat_req("c1", msgs, max_tokens=10_000))
    for _ in range(4):
        core.step()
    core.cancel("c1")
    done = run(core, chat_req("c2", msgs, max_tokens=2))[-1]
    assert done.usage["cached_tokens"] == done.usage["prompt_tokens"] - 1


def test_the_cache_stays_within_its_byte_budget(tiny_model: Path) -> None:
    from worker.core import EngineCore
    from worker.model import load_model

    budget = 600_000
    cfg = ModelConfig(name="tiny", path=str(tiny_model), prompt_cache_bytes=budget, prompt_cache_entries=100)
    small = EngineCore(load_model(cfg), cfg)
    for i in range(8):
        run(small, gen(f"{i} " * 200, max_tokens=2))
        assert small.prompt_cache is not None and small.prompt_cache.nbytes <= budget
    assert len(small.prompt_cache) >= 1


SYSTEM_PROMPT = "You are a careful assistant. Rules: be precise about Paris, Köln and Tokyo. " * 12


def _sys_chat(rid: str, user: str, **params: object) -> Generate:
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    return chat_req(rid, msgs, max_tokens=6, **params)


def test_a_system_prompt_outlives_conversations_that_push_it_out(tiny_model: Path) -> None:
    from worker.core import EngineCore
    from worker.model import load_model
    from worker.templating import render, system_prefix

    cfg = ModelConfig(name="tiny", path=str(tiny_model), prompt_cache_entries=4)
    small = EngineCore(load_model(cfg), cfg)
    run(small, _sys_chat("s0", "Where is Paris?"))
    for i in range(6):  # more conversations (without that system prompt) than the cache holds
        run(small, gen(f"other conversation {i} " * 30, max_tokens=2))
    req = _sys_chat("s1", "And where is Köln?")
    system_len = system_prefix(small.m.tokenizer, req.input, render(small.m.tokenizer, req.input))
    assert system_len > 100
    events = run(small, req)
    assert events[-1].usage["cached_tokens"] >= system_len
    assert _text(events, "s1") == _uncached(small, _sys_chat("s2", "And where is Köln?"))


def test_a_new_worker_starts_warm_from_what_the_last_one_saved(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.core import EngineCore
    from worker.model import load_model

    monkeypatch.setenv("HEARTH_CACHE_DIR", str(tmp_path))
    cfg = ModelConfig(name="tiny", path=str(tiny_model))
    first = EngineCore(load_model(cfg), cfg)
    run(first, _sys_chat("w0", "Where is Paris?"))
    assert first.save_warm() >= 1
    assert any(first.warm_folder().glob("*.safetensors"))

    second = EngineCore(load_model(cfg), cfg)
    assert second.load_warm() >= 1
    events = run(second, _sys_chat("w1", "Where is Tokyo?"))
    assert events[-1].usage["cached_tokens"] > 100
    assert _text(events, "w1") == _uncached(second, _sys_chat("w2", "Where is Tokyo?"))


def test_warm_saves_stay_within_their_budget(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.core import EngineCore
    from worker.model import load_model

    monkeypatch.setenv("HEARTH_CACHE_DIR", str(tmp_path))
    budget = 1_200_000  # about two of these entries (~0.55 MB of KV each)
    cfg = ModelConfig(name="tiny", path=str(tiny_model), warm_cache_bytes=budget)
    core = EngineCore(load_model(cfg), cfg)
    for i in range(6):
        run(core, gen(f"{i} warm " * 150, max_tokens=2))
    core.save_warm()
    files = list(core.warm_folder().glob("*.safetensors"))
    assert 1 <= len(files) < 6
    assert sum(f.stat().st_size for f in files) <= budget * 1.1  # file headers on top of KV bytes


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0, "logprobs": 3},
        {"temperature": 0.9, "seed": 7, "repetition_penalty": 1.3, "presence_penalty": 0.5},
        {"temperature": 0, "max_tokens": 1},
        {"temperature": 0, "stop": ["e"]},
    ],
    ids=["greedy-logprobs", "seeded-penalties", "one-token", "stop-string"],
)
def test_a_warm_request_takes_the_direct_first_token_and_answers_as_uncached(core, params) -> None:  # type: ignore[no-untyped-def]
    """A short new tail over a cached prefix: the first token comes out of ``add`` itself, and
    the whole answer (text, logprobs, sampling with a seed and penalties) is the uncached one."""
    base = [{"role": "user", "content": "Warm me up, a prompt about Köln and Paris. " * 8}]
    run(core, chat_req("dw0", base, max_tokens=3))
    turn = base + [{"role": "assistant", "content": "Fine."}, {"role": "user", "content": "And now?"}]
    params = {"max_tokens": 12, **params}
    first = core.add(chat_req("dw1", turn, **params))
    assert first and isinstance(first[0], (Delta, Done)), "the first token should come at once"
    events = first + run(core)
    done = events[-1]
    assert isinstance(done, Done) and done.usage["cached_tokens"] > 50
    cold = run(core, chat_req("dw2", turn, **params))  # the same, from the cache as well: compare to uncached
    saved, core.prompt_cache = core.prompt_cache, None
    try:
        uncached = run(core, chat_req("dw3", turn, **params))
    finally:
        core.prompt_cache = saved
    assert _text(events, "dw1") == _text(cold, "dw2") == _text(uncached, "dw3")
    assert done.usage["completion_tokens"] == uncached[-1].usage["completion_tokens"]
    assert done.finish_reason == uncached[-1].finish_reason
    if "logprobs" in params:
        lp = [e for ev in events if isinstance(ev, Delta) for e in ev.logprobs or []]
        lp_cold = [e for ev in uncached if isinstance(ev, Delta) for e in ev.logprobs or []]
        assert [e["token"] for e in lp] == [e["token"] for e in lp_cold]
        assert all(abs(a["logprob"] - b["logprob"]) < 1e-3 for a, b in zip(lp, lp_cold, strict=True))


def test_a_warm_request_joins_a_busy_batch_the_usual_way(core) -> None:  # type: ignore[no-untyped-def]
    """With other sequences decoding, a warm request is prefilled by the batch between their
    steps (no forward pass of its own that would stall them), and still answers the same."""
    base = [{"role": "user", "content": "Busy batch, warm prompt, about Tokyo. " * 8}]
    run(core, chat_req("bw0", base, max_tokens=3))
    turn = base + [{"role": "assistant", "content": "Yes."}, {"role": "user", "content": "More?"}]
    core.add(gen("busy other request", max_tokens=40))  # (itself warm: it may start directly)
    assert core.add(chat_req("bw1", turn, max_tokens=8)) == [], "no direct first token while the batch is busy"
    events = run(core)
    mine = [e for e in events if getattr(e, "id", None) == "bw1"]
    assert isinstance(mine[-1], Done) and mine[-1].usage["cached_tokens"] > 50
    assert _text(events, "bw1") == _uncached(core, chat_req("bw2", turn, max_tokens=8))


def test_warm_up_runs_each_batch_size_and_leaves_nothing_behind(core) -> None:  # type: ignore[no-untyped-def]
    from worker.warmup import warm_up

    entries = len(core.prompt_cache) if core.prompt_cache is not None else 0
    shapes = warm_up(core, [3, 1], joins=False)
    assert [n for n, _ in shapes] == [3, 1] and all(s > 0 for _, s in shapes)
    assert not core.has_work and core.running == 0 and not core.broken
    assert (len(core.prompt_cache) if core.prompt_cache is not None else 0) == entries
    assert run(core, gen("after-warmup", max_tokens=2))[-1].finish_reason == "length"


def test_warm_up_joins_run_the_staggered_paths_and_leave_nothing_behind(core, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The GPU warm-up's join rounds, run here on the CPU core: sequences join a decoding batch,
    leave it one by one, and the second round starts from the scratch prompt cache (its first
    request directly); nothing of it stays in the model's own prompt cache."""
    from worker import warmup

    directs: list[str] = []
    start_direct = core._start_direct

    def spy(live, *args, **kwargs):  # type: ignore[no-untyped-def]
        directs.append(live.id)
        return start_direct(live, *args, **kwargs)

    monkeypatch.setattr(core, "_start_direct", spy)
    entries = len(core.prompt_cache) if core.prompt_cache is not None else 0
    passes = warmup.warm_up(core, [], joins=True)
    assert [n for n, _ in passes] == ["joins"] and passes[0][1] > 0
    assert directs == ["warmup-join-1-0"]  # the second round's first request hit the scratch cache
    assert not core.has_work and core.running == 0 and not core.broken
    assert (len(core.prompt_cache) if core.prompt_cache is not None else 0) == entries
    assert run(core, gen("after-joins", max_tokens=2))[-1].finish_reason == "length"


def test_warm_up_default_sizes_follow_the_backend_rule(core) -> None:  # type: ignore[no-untyped-def]
    from shared.device import warmup_batches, warmup_joins
    from worker.device import backend
    from worker.warmup import warm_up

    joins = ["joins"] if warmup_joins(backend()) else []  # a GPU backend also runs the join rounds
    assert [n for n, _ in warm_up(core)] == [*warmup_batches(backend(), core.cfg.max_batch), *joins]


def test_arrivals_held_while_others_decode_are_prefilled_together(core, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With ``admission_hold`` steps (the GPU rule, forced here), requests that arrive while a
    sequence decodes wait and go into the batch generator in one insert; a held request that is
    cancelled leaves nothing; every answer is the one it gets alone."""
    from worker.admission import Admission

    alone = {rid: _uncached(core, gen(rid, max_tokens=6)) for rid in ("held-b", "held-c")}
    monkeypatch.setattr(core, "_admission", Admission(2))
    calls: list[int] = []
    insert = core._gen.insert_segments

    def spy(segments, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(segments))
        return insert(segments, **kwargs)

    monkeypatch.setattr(core._gen, "insert_segments", spy)
    saved, core.prompt_cache = core.prompt_cache, None  # no direct first token: every request inserts
    try:
        events = core.add(gen("held-a", max_tokens=30))
        while core.running == 0:
            events += core.step()
        for rid in ("held-b", "held-c"):
            events += core.add(gen(rid, max_tokens=6))
            events += core.step()
            assert calls == [1], "held while held-a decodes"
        events += core.add(gen("held-d", max_tokens=6))
        core.cancel("held-d")
        events += core.step()  # held-b has now waited past its 2 steps
        assert calls == [1, 2]
        while core.has_work:
            events += core.step()
    finally:
        core.prompt_cache = saved
    assert not [e for e in events if getattr(e, "id", None) == "held-d"]
    assert {rid: _text(events, rid) for rid in alone} == alone
    assert all(isinstance(next(e for e in reversed(events) if getattr(e, "id", None) == r), Done) for r in alone)
    # the wait shows in the timings: held-b waited steps to be admitted, held-a went in at once
    admit = {e.id: e.timings["admit_s"] for e in events if isinstance(e, Done)}
    assert admit["held-b"] > admit["held-a"] >= 0.0, admit
    assert all(0.0 <= admit[e.id] <= e.timings["ttft_s"] for e in events if isinstance(e, Done)), events


def test_arrivals_rendered_aside_are_admitted_when_inline_ones_are(core, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """worker/prep.py as the worker's loop drives it (hold on, the GPU rule): chats read
    while a sequence decodes are rendered on the side thread during the next step, added
    after it, and go into the batch generator at the same step, in one insert, as chats added
    inline; each answer is the one it gets alone, and a chat cancelled while rendering never
    starts."""
    from worker.admission import Admission
    from worker.prep import Renderer

    chats = {f"aside-{i}": [{"role": "user", "content": f"Tell me about Köln, {i}. " * (1 + i)}] for i in range(3)}
    alone = {rid: _uncached(core, chat_req(rid, m, max_tokens=6)) for rid, m in chats.items()}
    saved, insert = core.prompt_cache, core._gen.insert_segments
    core.prompt_cache = None  # no direct first token: every request inserts

    def admitted(aside: bool) -> tuple[list[tuple[int, int]], list]:  # type: ignore[type-arg]
        monkeypatch.setattr(core, "_admission", Admission(4))
        inserts: list[tuple[int, int]] = []  # (step, arrivals inserted)
        steps = [0]

        def spy(segments, **kwargs):  # type: ignore[no-untyped-def]
            inserts.append((steps[0], len(segments)))
            return insert(segments, **kwargs)

        monkeypatch.setattr(core._gen, "insert_segments", spy)
        renderer = Renderer(core.render)
        events = core.add(gen("lead", max_tokens=20))
        while core.running == 0:
            events += core.step()
        try:
            for rid, m in [*chats.items(), ("cancelled", [{"role": "user", "content": "gone"}])]:
                if aside:
                    renderer.submit(chat_req(rid, m, max_tokens=6))
                else:
                    events += core.add(chat_req(rid, m, max_tokens=6))
            if aside:
                assert renderer.cancel("cancelled")
                core.arrivals_coming()
            else:
                core.cancel("cancelled")
            while core.has_work or renderer:
                steps[0] += 1
                events += core.step()
                for req, rendered in renderer.take():  # the loop's next turn
                    events += core.add(req, rendered)
        finally:
            renderer.close()
        return inserts, events

    try:
        assert core.renders_aside is False  # the CPU's rule: no hold, so inline
        monkeypatch.setattr(core, "_admission", Admission(4))
        assert core.renders_aside is True
        inline, events_inline = admitted(aside=False)
        aside, events_aside = admitted(aside=True)
    finally:
        core.prompt_cache = saved
    assert aside == inline and inline[-1][1] == 3, (inline, aside)
    for events in (events_inline, events_aside):
        assert {rid: _text(events, rid) for rid in alone} == alone
        assert not [e for e in events if getattr(e, "id", None) == "cancelled"]
        done = {e.id: e for e in events if isinstance(e, Done)}
        assert all(0.0 <= done[r].timings["admit_s"] <= done[r].timings["ttft_s"] for r in alone), done


def test_warm_saves_are_kept_apart_by_the_settings_that_change_the_kv(tiny_model: Path) -> None:
    """The same weights with another context length, RoPE scaling or dtype compute other keys
    and values for the same tokens: their saves must not be read for each other."""
    from worker.core import EngineCore
    from worker.model import load_model

    base = ModelConfig(name="tiny", path=str(tiny_model))
    loaded = load_model(base)
    folders = {
        EngineCore(loaded, cfg).warm_folder()
        for cfg in (
            base,
            dataclasses.replace(base, context_length=4 * loaded.context_length, rope_scaling="yarn"),
            dataclasses.replace(base, rope_scaling="linear"),
            dataclasses.replace(base, dtype="bfloat16"),
        )
    }
    assert len(folders) == 4, folders
    again = EngineCore(loaded, dataclasses.replace(base, name="other", max_batch=3)).warm_folder()
    assert again == EngineCore(loaded, base).warm_folder()  # what does not touch the KV shares them
