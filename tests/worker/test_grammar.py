"""The grammar as a logits processor, in-process on the tiny model's real BPE tokenizer: which
tokens the mask lets through, how it follows the sampled tokens, and the tool-call grammars.
Then the engine core: a constrained request beside a free one in one batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.config import ModelConfig
from shared.grammar import response_grammar
from shared.protocol import Delta, Done, Generate
from tests.servers import TOOLS
from tests.tinymodel import build_tiny_model

mx = pytest.importorskip("mlx.core")


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-tools-grammar"), tools=True)


def loaded(path: Path) -> Any:
    from worker.model import load_model

    return load_model(ModelConfig(name="t", path=str(path)))


@pytest.fixture(scope="module")
def model(tool_model: Path) -> Any:
    return loaded(tool_model)


@pytest.fixture(scope="module")
def gtok(model: Any) -> Any:
    from worker.grammar import grammar_tokenizer

    return grammar_tokenizer(model)


def allowed(constraint: Any, context: list[int], vocab: int) -> set[int]:
    """Run the processor on flat logits: the token ids it leaves finite."""
    out = constraint(mx.array(context), mx.zeros((1, vocab)))
    finite: list[bool] = mx.isfinite(out[0]).tolist()
    return {i for i, ok in enumerate(finite) if ok}


def walk(constraint: Any, model: Any, prompt: list[int], text: str) -> tuple[list[int], set[int]]:
    """Feed ``text``'s tokens one call at a time, checking each was allowed; the tokens and the
    set allowed after the last."""
    ids = list(model.tokenizer.encode(text, add_special_tokens=False))
    context = list(prompt)
    ok = allowed(constraint, context, model.vocab_size)
    for t in ids:
        assert t in ok, (model.tokenizer.decode([t]), text)
        context.append(t)
        ok = allowed(constraint, context, model.vocab_size)
    return ids, ok


def test_the_mask_follows_a_json_value_and_then_admits_only_the_end(model: Any, gtok: Any) -> None:
    from worker.grammar import Constraint

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    c = Constraint(gtok, response_grammar({"type": "json_schema", "schema": schema}) or "", "response_format")
    _, after = walk(c, model, [1, 2, 3], '{"city": "Köln"}')
    assert after == set(gtok.eos)
    assert c.error is None and c.accepting


def test_free_whitespace_and_other_keys_are_masked(model: Any, gtok: Any) -> None:
    from worker.grammar import Constraint

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    c = Constraint(gtok, response_grammar({"type": "json_schema", "schema": schema}) or "", "response_format")
    first = allowed(c, [5], model.vocab_size)
    decoded = {model.tokenizer.decode([t]) for t in first}
    assert decoded and all('{"city": "'.startswith(d) for d in decoded)  # only the forced opening
    newline = model.tokenizer.encode("\n", add_special_tokens=False)
    space = model.tokenizer.encode(" ", add_special_tokens=False)
    assert not (set(newline) | set(space)) & first


def test_the_step_after_the_end_of_sequence_is_no_error(model: Any, gtok: Any) -> None:
    """mlx-lm runs one more step after a sequence's last token: the processor then sees the
    end-of-sequence token, which a complete grammar must take quietly."""
    from worker.grammar import Constraint

    c = Constraint(gtok, response_grammar({"type": "json_object"}) or "", "response_format")
    ids, after = walk(c, model, [1], "{}")
    allowed(c, [1, *ids, gtok.eos[0]], model.vocab_size)
    assert c.error is None


def test_a_token_the_grammar_refuses_fails_the_request_and_ends_it(model: Any, gtok: Any) -> None:
    from worker.grammar import Constraint

    c = Constraint(gtok, response_grammar({"type": "json_object"}) or "", "response_format")
    allowed(c, [1], model.vocab_size)
    bad = model.tokenizer.encode("x", add_special_tokens=False)[0]
    assert allowed(c, [1, bad], model.vocab_size) == set(gtok.eos)
    assert c.error


def test_generic_grammar_auto_is_text_or_one_call(model: Any, gtok: Any) -> None:
    from worker.grammar import GENERIC, Constraint, parse_generic, tool_grammar

    grammar = tool_grammar(gtok, GENERIC, TOOLS, "auto", True)
    assert grammar is not None
    text = Constraint(gtok, grammar, "tools")
    walk(text, model, [1], "It is sunny.")
    call = '{"tool_call": {"name": "get_weather", "arguments": {"city": "Köln"}}}'
    c = Constraint(gtok, grammar, "tools")
    _, after = walk(c, model, [1], call)
    assert after == set(gtok.eos)
    body = call[len(GENERIC.start) :]
    assert parse_generic(body) == {"name": "get_weather", "arguments": {"city": "Köln"}}
    # a call to a function that is not offered, or arguments off its schema, can't be written
    for wrong in ('{"tool_call": {"name": "get_wind"', '{"tool_call": {"name": "get_weather", "arguments": {"town"'):
        c = Constraint(gtok, grammar, "tools")
        ids = list(model.tokenizer.encode(wrong, add_special_tokens=False))
        assert c.matcher.try_consume_tokens(ids) < len(ids)


def test_generic_grammar_named_forces_that_call(model: Any, gtok: Any) -> None:
    from worker.grammar import GENERIC, Constraint, tool_grammar

    grammar = tool_grammar(gtok, GENERIC, TOOLS, {"name": "get_time"}, True)
    c = Constraint(gtok, grammar or "", "tools")
    ids = list(model.tokenizer.encode("Hello", add_special_tokens=False))
    assert c.matcher.try_consume_tokens(ids) == 0
    call = '{"tool_call": {"name": "get_time", "arguments": {}}}'
    _, after = walk(Constraint(gtok, grammar or "", "tools"), model, [1], call)
    assert after == set(gtok.eos)


def test_native_json_tools_grammar_constrains_calls_between_special_markers(model: Any, gtok: Any) -> None:
    """The tool model's <tool_call> markers are special tokens: text runs free until one, then
    the call is held to an offered function and its schema, and closed by the end marker."""
    from worker.grammar import Constraint, tool_grammar
    from worker.toolcalls import ToolSyntax

    syntax = ToolSyntax.of(model.tokenizer)
    assert syntax is not None and syntax.name == "json_tools" and gtok.is_special("<tool_call>")
    grammar = tool_grammar(gtok, syntax, TOOLS, "auto", True)
    c = Constraint(gtok, grammar or "", "tools")
    call = 'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Köln"}}\n</tool_call>'
    walk(c, model, [1], call)
    bad = Constraint(gtok, grammar or "", "tools")
    ids = list(model.tokenizer.encode('<tool_call>\n{"name": "nope"', add_special_tokens=False))
    assert bad.matcher.try_consume_tokens(ids) < len(ids)
    # a forced call: the prompt's opening (the prefill) is consumed when the matcher is made
    named = tool_grammar(gtok, syntax, TOOLS, {"name": "get_time"}, False)
    prefill = model.tokenizer.encode(syntax.prefill("get_time") or "", add_special_tokens=False)
    forced = Constraint(gtok, named or "", "tools", prefill)
    _, after = walk(forced, model, [1], "{}}\n</tool_call>")
    assert after == set(gtok.eos)  # parallel_tool_calls false: one call, then the end


def run(core: Any, reqs: list[Generate]) -> list[Any]:
    events: list[Any] = []
    for r in reqs:
        events += core.add(r)
    while core.has_work:
        events += core.step()
    return events


def text_of(events: list[Any], rid: str) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta) and e.id == rid)


def test_a_constrained_request_shares_the_batch_with_a_free_one(tiny_model: Path) -> None:
    """On the random-weight model: the constrained answer is one of the enum's values and ends
    with ``stop``; the free one beside it is exactly what it is alone."""
    from worker.core import EngineCore

    cfg = ModelConfig(name="t", path=str(tiny_model), prompt_cache_bytes=0)
    core = EngineCore(loaded(tiny_model), cfg)
    fmt = {"type": "json_schema", "schema": {"type": "string", "enum": ["yes", "no"]}}
    msgs = {"messages": [{"role": "user", "content": "Is it?"}]}
    free = Generate("free", "t", msgs, {"temperature": 0, "max_tokens": 12})
    json_req = Generate("json", "t", msgs, {"temperature": 0.9, "seed": 3, "max_tokens": 12, "response_format": fmt})
    together = run(core, [free, json_req])
    alone = run(core, [Generate("free", "t", msgs, {"temperature": 0, "max_tokens": 12})])
    assert text_of(together, "free") == text_of(alone, "free")
    assert json.loads(text_of(together, "json")) in ("yes", "no")
    done = {e.id: e for e in together if isinstance(e, Done)}
    assert done["json"].finish_reason == "stop"


def test_a_schema_the_worker_cannot_compile_is_a_bad_request(tiny_model: Path) -> None:
    from shared.protocol import ERROR_BAD_REQUEST, Error
    from worker.core import EngineCore

    core = EngineCore(loaded(tiny_model), ModelConfig(name="t", path=str(tiny_model)))
    fmt = {"type": "json_schema", "schema": {"type": "array", "uniqueItems": True}}
    (err,) = core.add(Generate("x", "t", {"prompt": "a"}, {"response_format": fmt}))
    assert isinstance(err, Error) and err.code == ERROR_BAD_REQUEST
    assert err.param == "response_format" and "uniqueItems" in err.message


def test_a_tokenizer_llguidance_cannot_read_makes_constrained_requests_a_400() -> None:
    """Not a failed load: the adapter's failure is kept and named in each constrained request's 400."""
    from types import SimpleNamespace

    from worker.grammar import NoGrammarTokenizer, grammar_tokenizer

    m = SimpleNamespace(tokenizer=object(), vocab_size=10, grammar_tokenizer=None)
    for _ in range(2):
        with pytest.raises(NoGrammarTokenizer) as e:
            grammar_tokenizer(m)
        assert e.value.param == "response_format" and "not available for this model's tokenizer" in str(e.value)


def test_top_logprobs_leave_out_what_the_grammar_masked(tiny_model: Path) -> None:
    """With one allowed token, top_logprobs has just that one: impossible tokens are no candidates."""
    from worker.core import EngineCore

    core = EngineCore(loaded(tiny_model), ModelConfig(name="t", path=str(tiny_model)))
    fmt = {"type": "json_schema", "schema": {"const": "yes"}}
    events = run(core, [Generate("lp", "t", {"prompt": "a"}, {"max_tokens": 1, "logprobs": 5, "response_format": fmt})])
    (delta,) = [e for e in events if isinstance(e, Delta)]
    (entry,) = delta.logprobs or []
    assert [t["token"] for t in entry["top_logprobs"]] == [entry["token"]]
    assert entry["top_logprobs"][0]["logprob"] == pytest.approx(0.0, abs=1e-4)
