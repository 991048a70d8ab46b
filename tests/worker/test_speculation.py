"""Speculative decoding in the engine core, in-process on tiny random-weight models.

Greedy (and seeded) output with speculation is token-for-token what decoding without it gives,
with prompt lookup and with draft models, alone and in ragged batches, with stop strings,
penalties and grammars; sampled output follows the same distribution; cancel and the prompt
cache work as without speculation.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest

from shared.config import ModelConfig
from shared.protocol import Delta, Done, Error, Generate
from tests.tinymodel import build_tiny_model

CODE = "def hello(name):\n    return f'Hello, {name}!'\n\nprint(hello('a'))\nprint(hello('b'))\n" * 3


@pytest.fixture(scope="module")
def draft_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model of the same tokenizer (the same corpus trains the same BPE)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-draft"), seed=1)


def make_core(path: Path, **fields: Any):  # type: ignore[no-untyped-def]
    from worker.core import EngineCore
    from worker.model import load_model

    cfg = ModelConfig(name="tiny", path=str(path), max_batch=8, **fields)
    return EngineCore(load_model(cfg), cfg)


@pytest.fixture(scope="module")
def cores(tiny_model: Path, draft_model: Path) -> dict[str, Any]:
    return {
        "off": make_core(tiny_model, speculative="off"),
        "lookup": make_core(tiny_model, speculative="lookup"),
        # greedy rows' steps with drafts launched before the last one lands (the GPU default)
        "chained": make_core(tiny_model, speculative="lookup", speculative_chain=True),
        "draft": make_core(tiny_model, draft_model=str(draft_model)),
        "self-draft": make_core(tiny_model, draft_model=str(tiny_model)),  # drafts the target's own argmax
    }


def req(rid: str, content: str = CODE, **params: Any) -> Generate:
    return Generate(
        id=rid,
        model="tiny",
        input={"messages": [{"role": "user", "content": content}]},
        params={"temperature": 0, "max_tokens": 40, **params},
    )


def run(core, *reqs: Generate) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Each request's text, token ids and done (or error)."""
    events = [e for r in reqs for e in core.add(r)]
    for _ in range(2000):
        if not core.has_work:
            break
        events += core.step()
    out: dict[str, Any] = {r.id: {"text": "", "ids": [], "end": None} for r in reqs}
    for e in events:
        if isinstance(e, Delta):
            out[e.id]["text"] += e.text
            out[e.id]["ids"] += e.token_ids or []
        elif isinstance(e, (Done, Error)):
            out[e.id]["end"] = e
    return out


def texts(result: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {k: (v["text"], getattr(v["end"], "finish_reason", None)) for k, v in result.items()}


@pytest.mark.parametrize("mode", ["lookup", "chained", "draft", "self-draft"])
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"stop": ["name"]},
        {"repetition_penalty": 1.3, "presence_penalty": 0.5},
        {"response_format": {"type": "json_schema", "schema": {"type": "array", "items": {"type": "integer"}}}},
        {"temperature": 0.9, "seed": 11},  # a seeded sampler draws once per token, in order, either way
    ],
    ids=["greedy", "stop", "penalties", "json_schema", "seeded"],
)
def test_speculation_gives_the_same_tokens_as_decoding_without_it(
    cores: dict[str, Any], mode: str, params: dict[str, Any]
) -> None:
    reqs = [req(f"r{i}", CODE + str(i), **params) for i in range(3)]
    plain = run(cores["off"], *reqs)
    fast = run(cores[mode], *reqs)
    assert texts(fast) == texts(plain)
    assert all(isinstance(v["end"], Done) for v in fast.values())
    assert [v["ids"] for v in fast.values()] == [v["ids"] for v in plain.values()]


def test_logprobs_in_a_batch_whose_other_rows_skip_them_are_the_plain_decodings(cores: dict[str, Any]) -> None:
    """Greedy rows that don't ask for logprobs skip the normalisation (worker.decode._normalized);
    the row that asks still gets true log-probabilities, those of decoding without speculation."""

    def logprobs(core: Any) -> list[dict[str, Any]]:
        reqs = [req("lp", CODE, logprobs=3), req("a", CODE + "1"), req("b", CODE + "2")]
        events = [e for r in reqs for e in core.add(r)]
        while core.has_work:
            events += core.step()
        return [x for e in events if isinstance(e, Delta) and e.id == "lp" for x in e.logprobs or []]

    plain, fast = logprobs(cores["off"]), logprobs(cores["lookup"])
    assert len(fast) == len(plain) > 10
    for a, b in zip(fast, plain, strict=True):
        assert a["token"] == b["token"] and a["logprob"] <= 0
        assert math.isclose(a["logprob"], b["logprob"], abs_tol=1e-4)
        assert [t["token"] for t in a["top_logprobs"]] == [t["token"] for t in b["top_logprobs"]]


def test_drafts_are_accepted_and_counted(cores: dict[str, Any]) -> None:
    """The target drafting for itself agrees with every greedy draft; lookup on a repetitive
    answer accepts some: both turn them into fewer steps than tokens."""
    own = run(cores["self-draft"], req("a"))["a"]["end"].usage
    assert own["draft_tokens"] > 0 and own["accepted_draft_tokens"] == own["draft_tokens"]
    assert own["decode_steps"] < own["completion_tokens"] / 2
    looked = run(cores["lookup"], req("b"))["b"]["end"].usage
    assert looked["accepted_draft_tokens"] > 0 and looked["decode_steps"] < looked["completion_tokens"]
    plain = run(cores["off"], req("c"))["c"]["end"].usage
    assert "decode_steps" not in plain


def test_chained_steps_launch_before_the_last_lands_and_accept_drafts(cores: dict[str, Any]) -> None:
    """With chaining, greedy rows' steps with drafts are launched on the device's own verdict
    on the step before: they happen, they accept drafts, and a batch of them gives what
    decoding one at a time without speculation gives (token for token, also when some rows
    run out of ``max_tokens`` or stop on a string mid-run)."""
    core = cores["chained"]
    assert core._decode is not None
    before = core._decode.chained
    reqs = [req(f"c{i}", CODE + str(i), max_tokens=30 + 9 * i, stop=["xyz"] if i == 2 else None) for i in range(4)]
    fast = run(core, *reqs)
    assert core._decode.chained > before
    usage = [fast[f"c{i}"]["end"].usage for i in range(4)]
    assert sum(u["accepted_draft_tokens"] for u in usage) > 0
    assert sum(u["decode_steps"] for u in usage) < sum(u["completion_tokens"] for u in usage)
    for r in reqs:
        assert texts(fast)[r.id] == texts(run(cores["off"], r))[r.id]
        assert fast[r.id]["ids"] == run(cores["off"], r)[r.id]["ids"]


def test_a_ragged_batch_mixes_speculating_and_opted_out_rows(cores: dict[str, Any]) -> None:
    reqs = [req(f"m{i}", CODE + str(i), max_tokens=24 + 7 * i, speculative=i % 2 == 0) for i in range(5)]
    plain = run(cores["off"], *reqs)
    for mode in ("lookup", "chained", "self-draft"):
        mixed = run(cores[mode], *reqs)
        assert texts(mixed) == texts(plain)
        for i in range(5):
            usage = mixed[f"m{i}"]["end"].usage
            assert (usage["draft_tokens"] > 0) == (i % 2 == 0), (mode, i, usage)
        assert mixed["m4"]["end"].usage["completion_tokens"] == 52  # max_tokens cut at the right token


@pytest.mark.parametrize("mode", ["self-draft", "chained"])
def test_cancel_mid_draft_frees_the_row_and_leaves_the_others_alone(cores: dict[str, Any], mode: str) -> None:
    core = cores[mode]
    alone = run(cores["off"], req("keep", max_tokens=60))
    events = core.add(req("keep", max_tokens=60)) + core.add(req("drop", CODE + "x", max_tokens=60))
    for _ in range(3):
        events += core.step()
    assert core._decode is not None and len(core._decode) == 2  # both drafting in the batch
    core.cancel("drop")
    assert len(core._decode) == 1
    while core.has_work:
        events += core.step()
    kept = "".join(e.text for e in events if isinstance(e, Delta) and e.id == "keep")
    assert kept == alone["keep"]["text"]
    assert not any(isinstance(e, Done) and e.id == "drop" for e in events)
    assert len(core._decode) == 0


@pytest.mark.parametrize("mode", ["lookup", "chained"])
def test_a_prompt_cache_hit_then_speculates(cores: dict[str, Any], mode: str) -> None:
    core = cores[mode]
    turn = [{"role": "user", "content": CODE}]
    first = run(
        core, Generate(id="t1", model="tiny", input={"messages": turn}, params={"temperature": 0, "max_tokens": 40})
    )
    nxt = turn + [{"role": "assistant", "content": first["t1"]["text"]}, {"role": "user", "content": CODE + "again"}]
    second = Generate(id="t2", model="tiny", input={"messages": nxt}, params={"temperature": 0, "max_tokens": 40})
    warm = run(core, second)["t2"]
    usage = warm["end"].usage
    assert usage["cached_tokens"] > 0 and usage["draft_tokens"] > 0
    assert warm["text"] == run(cores["off"], dataclasses.replace(second, id="t3"))["t3"]["text"]


def _sampled(core, n: int, seed: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """``n`` sampled answers (unseeded: the global generator, seeded once for the whole run) to
    a prompt whose logit_bias makes three tokens likely, so lookup drafts them often."""
    ids = [5, 6, 7]
    bias = {str(ids[0]): 9.0, str(ids[1]): 8.5, str(ids[2]): 8.0}
    mx.random.seed(seed)
    reqs = [req(f"s{i}", "abc", temperature=1.0, max_tokens=8, logit_bias=bias) for i in range(n)]
    out = []
    for start in range(0, n, 8):
        res = run(core, *reqs[start : start + 8])
        out += [res[r.id]["ids"] for r in reqs[start : start + 8]]
    return out


def test_sampled_output_follows_the_same_distribution(cores: dict[str, Any]) -> None:
    """Unseeded sampling at temperature 1: the frequencies of (position, token) and of token
    pairs with speculation match those without (a chi-square two-sample test, p > 0.001), and
    the drafts were really used (some accepted)."""
    n = 160
    plain = _sampled(cores["off"], n, 1)
    spec = _sampled(cores["lookup"], n, 2)
    accepted = run(cores["lookup"], req("z", "abc", temperature=1.0, max_tokens=8, logit_bias={"5": 9.0}))
    assert accepted["z"]["end"].usage["decode_steps"] > 0

    def counts(seqs: list[list[int]]) -> Counter[tuple[Any, ...]]:
        c: Counter[tuple[Any, ...]] = Counter()
        for s in seqs:
            c.update((i, t) for i, t in enumerate(s))
            c.update(("pair", a, b) for a, b in zip(s, s[1:]))
        return c

    a, b = counts(plain), counts(spec)
    cells = [k for k in set(a) | set(b) if a[k] + b[k] >= 10]
    chi2 = sum((a[k] - b[k]) ** 2 / (a[k] + b[k]) for k in cells)
    dof = max(len(cells) - 1, 1)
    # Wilson-Hilferty: the chi-square quantile at p = 0.001 for ``dof`` degrees of freedom
    z = 3.09
    limit = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert len(cells) > 10
    assert chi2 < limit, (chi2, limit, dof)
    draws = sum(len(s) for s in spec)
    assert draws == sum(len(s) for s in plain) == n * 8


def test_a_draft_model_with_another_tokenizer_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    from worker.draft import DraftError

    other = build_tiny_model(tmp_path / "other", vocab=700)
    with pytest.raises(DraftError, match="vocabulary"):
        make_core(tiny_model, draft_model=str(other))


@pytest.mark.parametrize(
    "params",
    [
        {"repetition_penalty": 1.3, "presence_penalty": 0.5},
        {"response_format": {"type": "json_schema", "schema": {"type": "array", "items": {"type": "integer"}}}},
        {"temperature": 0.9, "seed": 11, "frequency_penalty": 0.4},
    ],
    ids=["penalties", "json_schema", "seeded"],
)
def test_plain_steps_launched_before_the_last_one_lands_give_the_same_tokens(
    cores: dict[str, Any], params: dict[str, Any]
) -> None:
    """Rows that don't draft run plain steps, each launched on the previous one's tokens while
    they are still computing: their processors must still see every token, in order."""
    reqs = [req(f"p{i}", CODE + str(i), speculative=False, **params) for i in range(3)]
    assert texts(run(cores["lookup"], *reqs)) == texts(run(cores["off"], *reqs))


def test_warming_the_verify_widths_leaves_the_batch_as_it_was(cores: dict[str, Any]) -> None:
    """The GPU warm-up runs forward passes of each width over the rows and takes them back:
    the answers are unchanged (run here on the CPU, which has nothing to compile)."""
    core = cores["lookup"]
    reqs = [req(f"w{i}", CODE + str(i)) for i in range(2)]
    events = [e for r in reqs for e in core.add(r)]
    widths: list[int] = []
    while core.has_work:
        events += core.step()
        if not widths:
            widths = core.warm_speculation()
    assert widths  # the rows were in the decode batch at some step
    got = {r.id: "".join(e.text for e in events if isinstance(e, Delta) and e.id == r.id) for r in reqs}
    assert got == {k: v["text"] for k, v in run(cores["off"], *reqs).items()}
