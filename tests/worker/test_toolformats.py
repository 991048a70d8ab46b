"""Tool-call grammars for every mlx-lm native format (worker/toolformats.py), on SmolLM2's real
tokenizer: as it is (every marker is text) and with the formats' markers added as special tokens
(as the models that use them have them).

The property: every answer the grammar admits is a call that mlx-lm's own parser for the format
(``mlx_lm.tool_parsers.<name>.parse_tool_call``, run by ``ToolCallStream`` exactly as the worker
runs it) reads into calls of offered functions whose arguments validate against the function's
JSON Schema. Checked by sampling: random tokens among those the grammar allows, to the end.
Then hand-written calls: a valid one is admitted whole, and each invalid variant (a function or
parameter not offered, a value off its schema, a value the parser would misread) is refused.
"""

from __future__ import annotations

import importlib
import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from worker.toolcalls import ToolCallStream, ToolSyntax

np = pytest.importorskip("numpy")
pytest.importorskip("mlx.core")

FORMATS = [
    "json_tools", "qwen3_coder", "glm47", "laguna", "longcat", "minimax_m2", "minicpm5", "muse_spark",
    "kimi_k2", "kimi_k3", "gemma4", "function_gemma", "pythonic", "mistral",
]  # fmt: skip
# the markers of all formats, as the tokenizers of their models have them
SPECIALS = [
    "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>", "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>",
    "<|open|>", "<|close|>", "<|sep|>", "<|tool_call>", "<tool_call|>", '<|"|>', "<start_function_call>",
    "<end_function_call>", "<escape>", "<|tool_call_start|>", "<arg_key>", "</arg_key>", "<arg_value>",
    "</arg_value>", "<minimax:tool_call>", "</minimax:tool_call>",
]  # fmt: skip

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "detailed": {"type": "boolean"},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["city"],
    "additionalProperties": False,
}
TAG = {
    "type": "object",
    "properties": {
        "labels": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
        "opts": {
            "type": "object",
            "properties": {"x": {"type": "integer", "minimum": -99, "maximum": 99}},
            "required": ["x"],
            "additionalProperties": False,
        },
    },
    "required": ["labels"],
    "additionalProperties": False,
}
EMPTY = {"type": "object", "properties": {}, "additionalProperties": False}


def tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


SCALAR_TOOLS = [tool("get_weather", WEATHER), tool("get_time", EMPTY)]
TOOLS = [*SCALAR_TOOLS, tool("tag", TAG)]
SCALAR_ONLY = {"gemma4", "function_gemma"}  # nested values are not constrained there
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def smol_dir() -> Path:
    from shared.config import default_model_path
    from worker.gguf import cached_import

    return cached_import(default_model_path(), dtype="float32")


class Tok:
    """A tokenizer and llguidance's view of it."""

    def __init__(self, folder: Path) -> None:
        from mlx_lm.tokenizer_utils import load

        from worker.grammar import GrammarTokenizer

        self.hf = load(folder)
        self.vocab = len(self.hf.get_vocab()) if hasattr(self.hf, "get_vocab") else 0
        self.g = GrammarTokenizer(self.hf, max(self.vocab, 49152))

    def ids(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def text(self, ids: list[int]) -> str:
        return str(self.hf.decode(ids))


@pytest.fixture(scope="module", params=["text-markers", "special-markers"])
def tok(request: pytest.FixtureRequest, smol_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Tok:
    if request.param == "text-markers":
        return Tok(smol_dir)
    import shutil

    from tokenizers import AddedToken, Tokenizer

    out = tmp_path_factory.mktemp("smol-specials")
    for f in ("tokenizer_config.json", "special_tokens_map.json", "config.json"):
        if (smol_dir / f).is_file():
            shutil.copy(smol_dir / f, out / f)
    t = Tokenizer.from_file(str(smol_dir / "tokenizer.json"))
    t.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    t.save(str(out / "tokenizer.json"))
    return Tok(out)


def grammar(tok: Tok, name: str, tools: list[dict[str, Any]], choice: Any, parallel: bool) -> str:
    from worker.grammar import tool_grammar

    g = tool_grammar(tok.g, ToolSyntax.named(name), tools, choice, parallel)
    assert g is not None, f"{name} has a grammar for these tools"
    return g


def sample(tok: Tok, text: str, opening: str, rng: random.Random, limit: int = 400) -> list[int]:
    """Random tokens the grammar allows after ``opening`` (consumed as the worker consumes a
    prefill), until it takes the end of sequence; the whole answer's tokens."""
    import llguidance.numpy as llg_np

    m = tok.g.matcher(text)
    assert not m.is_error(), m.get_error()
    ids = tok.ids(opening) if opening else []
    assert m.consume_tokens(ids), (opening, m.get_error())
    mask = llg_np.allocate_token_bitmask(1, tok.g.vocab_size)
    eos = set(tok.g.eos)
    for _ in range(limit):
        llg_np.fill_next_token_bitmask(m, mask, 0)
        bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[: tok.g.vocab_size]
        allowed = [int(i) for i in np.nonzero(bits)[0]]
        choices = [i for i in allowed if i not in eos]
        if len(choices) < len(allowed) and (not choices or rng.random() < 0.5):
            assert m.is_accepting()
            return ids
        t = rng.choice(choices)
        assert m.consume_token(t), m.get_error()
        ids.append(t)
    raise AssertionError(f"no end within {limit} tokens: {tok.text(ids)!r}")


def calls_in(name: str, tools: list[dict[str, Any]], answer: str, prefill: str, parallel: bool) -> list[Any]:
    """The answer through ToolCallStream: its events (text and calls), as the worker sends them."""
    stream = ToolCallStream(ToolSyntax.named(name), tools, prefill=prefill, parallel=parallel)
    return [e for e in [*stream.push(answer[len(prefill) :]), *stream.finish()] if e != ""]


CHOICES = ["required", {"name": "get_weather"}, {"name": "get_time"}, "auto"]


@pytest.mark.parametrize("name", FORMATS)
def test_every_sampled_answer_parses_into_valid_calls(tok: Tok, name: str) -> None:
    tools = SCALAR_TOOLS if name in SCALAR_ONLY else TOOLS
    syntax = ToolSyntax.named(name)
    rng = random.Random(name)
    seen: set[str] = set()
    module = importlib.import_module(f"mlx_lm.tool_parsers.{name}")
    assert syntax.parse is module.parse_tool_call  # what ToolCallStream parses each call with
    for i in range(32):
        choice = CHOICES[i % len(CHOICES)]
        parallel = i % 3 != 0
        only = choice.get("name") if isinstance(choice, dict) else None
        g = grammar(tok, name, tools, choice, parallel)
        # the forced opening is the worker's prefill; for "auto" the model opened a call itself
        prefill = syntax.prefill(only) if choice != "auto" else ""
        opening = prefill if choice != "auto" else "Let me check. " + syntax.start
        answer = tok.text(sample(tok, g, opening or "", rng))
        assert answer.startswith(opening or "")
        events = calls_in(name, tools, answer, prefill or "", parallel)
        calls = [e for e in events if isinstance(e, dict)]
        assert calls, (answer, events)
        if choice != "auto":
            assert not isinstance(events[0], str), (answer, events)  # the answer opens with the call
        if only is not None:
            assert calls[0]["name"] == only
        if not parallel:
            assert len(calls) == 1 and isinstance(events[-1], dict), (answer, events)
        for call in calls:
            jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
            seen.add(call["name"])
    assert seen == {t["function"]["name"] for t in tools}


# a call of get_weather(city=C, days=D) as each format writes it: @N name, @K key, @C city, @D days
WRITTEN = {
    "json_tools": '<tool_call>\n{"name": "@N", "arguments": {"@K": "@C", "days": @D}}\n</tool_call>',
    "qwen3_coder": "<tool_call>\n<function=@N>\n<parameter=@K>\n@C\n</parameter>\n<parameter=days>\n@D\n</parameter>\n"
    "</function>\n</tool_call>",
    "glm47": "<tool_call>@N<arg_key>@K</arg_key><arg_value>@C</arg_value><arg_key>days</arg_key>"
    "<arg_value>@D</arg_value></tool_call>",
    "longcat": "<longcat_tool_call>@N<longcat_arg_key>@K</longcat_arg_key><longcat_arg_value>@C</longcat_arg_value>"
    "<longcat_arg_key>days</longcat_arg_key><longcat_arg_value>@D</longcat_arg_value></longcat_tool_call>",
    "minimax_m2": '<minimax:tool_call>\n<invoke name="@N">\n<parameter name="@K">@C</parameter>\n'
    '<parameter name="days">@D</parameter>\n</invoke>\n</minimax:tool_call>',
    "minicpm5": '<function name="@N"><param name="@K">@C</param><param name="days">@D</param></function>',
    "muse_spark": '<atem:function_calls>\n<atem:invoke name="@N">\n<atem:parameter name="@K">"@C"</atem:parameter>\n'
    '<atem:parameter name="days">@D</atem:parameter>\n</atem:invoke>\n</atem:function_calls>',
    "kimi_k2": "<|tool_calls_section_begin|><|tool_call_begin|>functions.@N:0<|tool_call_argument_begin|>"
    '{"@K": "@C", "days": @D}<|tool_call_end|><|tool_calls_section_end|>',
    "kimi_k3": '<|open|>tools<|sep|>\n<|open|>call tool="@N" index="0"<|sep|>\n<|open|>json type="object"<|sep|>'
    '{"@K": "@C", "days": @D}<|close|>json<|sep|>\n<|close|>call<|sep|>\n<|close|>tools<|sep|>',
    "gemma4": '<|tool_call>call:@N{@K:<|"|>@C<|"|>,days:@D}<tool_call|>',
    "function_gemma": "<start_function_call>call:@N{@K:<escape>@C<escape>,days:@D}<end_function_call>",
    "pythonic": '<|tool_call_start|>[@N(@K="@C", days=@D)]<|tool_call_end|>',
    "mistral": '[TOOL_CALLS][{"name": "@N", "arguments": {"@K": "@C", "days": @D}}]',
}
WRITTEN["laguna"] = WRITTEN["glm47"]
MISTRAL_HEADER = '[TOOL_CALLS]@N[ARGS]{"@K": "@C", "days": @D}'
RAW = {"qwen3_coder", "glm47", "laguna", "longcat", "minimax_m2", "minicpm5"}  # strings as written
STRIPPED = {"glm47", "laguna", "longcat", "minimax_m2", "minicpm5"}  # ... and stripped by the parser
NULLABLE = {"qwen3_coder", "minimax_m2", "minicpm5"}  # ... where a bare null reads as None


def written(tok: Tok, name: str, **subs: str) -> str:
    text = MISTRAL_HEADER if name == "mistral" and tok.g.is_special("[ARGS]") else WRITTEN[name]
    values = {"@N": "get_weather", "@K": "city", "@C": "Köln", "@D": "7", **subs}
    for k, v in values.items():
        text = text.replace(k, v)
    return text


def admits(tok: Tok, g: str, text: str) -> bool:
    """Whether the grammar takes ``text`` whole and then may end."""
    m = tok.g.matcher(g)
    ids = tok.ids(text)
    return m.try_consume_tokens(ids) == len(ids) and m.is_accepting()


@pytest.mark.parametrize("name", FORMATS)
def test_a_valid_call_is_admitted_and_invalid_ones_are_refused(tok: Tok, name: str) -> None:
    g = grammar(tok, name, SCALAR_TOOLS, "required", False)
    good = written(tok, name)
    assert admits(tok, g, good), good
    (call,) = [e for e in calls_in(name, SCALAR_TOOLS, good, "", False) if isinstance(e, dict)]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Köln", "days": 7}
    bad = [
        written(tok, name, **{"@N": "get_wind"}),  # no such function
        written(tok, name, **{"@K": "town"}),  # no such parameter (and city missing)
        written(tok, name, **{"@D": "70"}),  # above the maximum
        written(tok, name, **{"@D": "7.5"}),  # not an integer
        written(tok, name, **{"@C": "Münchhausen"}),  # longer than maxLength
    ]
    if name in STRIPPED:
        bad.append(written(tok, name, **{"@C": " Köln"}))  # the parser would strip the space
    if name in NULLABLE:
        bad.append(written(tok, name, **{"@C": "null"}))  # the parser would read None
    for text in bad:
        assert not admits(tok, g, text), text


@pytest.mark.parametrize("name", FORMATS)
def test_auto_lets_text_through_and_holds_a_call_once_opened(tok: Tok, name: str) -> None:
    g = grammar(tok, name, SCALAR_TOOLS, "auto", True)
    assert admits(tok, g, "It is sunny in Köln.")
    assert admits(tok, g, "Let me look. " + written(tok, name))
    assert not admits(tok, g, "Let me look. " + written(tok, name, **{"@N": "get_wind"}))


@pytest.mark.parametrize("name", FORMATS)
def test_parallel_off_ends_the_answer_after_one_call(tok: Tok, name: str) -> None:
    g = grammar(tok, name, SCALAR_TOOLS, "required", False)
    m = tok.g.matcher(g)
    ids = tok.ids(written(tok, name))
    assert m.try_consume_tokens(ids) == len(ids)
    more = tok.ids(" and more")
    assert m.try_consume_tokens(more) == 0
    with_parallel = tok.g.matcher(grammar(tok, name, SCALAR_TOOLS, "required", True))
    assert with_parallel.try_consume_tokens(ids) == len(ids)


@pytest.mark.parametrize(
    ("name", "parameters", "why"),
    [
        ("qwen3_coder", {"type": "object", "properties": {"a": {"type": "string", "pattern": "a$|^b"}}}, "anchors"),
        ("glm47", {"type": "object", "properties": {"a": {"type": "string", "enum": [1]}}}, "no string in enum"),
        ("qwen3_coder", {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}}, "no type"),
        ("glm47", {"type": "object", "properties": {"a": {"type": "string", "contentEncoding": "base64"}}}, "encoding"),
        ("minimax_m2", {"type": "object", "properties": {"a": {"type": ["string", "null"]}}}, "type list"),
        ("gemma4", TAG, "nested values"),
        ("function_gemma", TAG, "nested values"),
        ("qwen3_coder", {"type": "object", "properties": {"a": {"type": "string"}}, "minProperties": 1}, "object"),
    ],
)
def test_a_schema_a_format_cannot_hold_leaves_the_calls_parsed_only(
    tok: Tok, name: str, parameters: dict[str, Any], why: str
) -> None:
    from worker.grammar import tool_grammar

    assert tool_grammar(tok.g, ToolSyntax.named(name), [tool("f", parameters)], "auto", True) is None, why


def test_names_a_format_cannot_write_leave_the_calls_parsed_only(tok: Tok) -> None:
    from worker.grammar import tool_grammar

    dotted = [tool("web.search", EMPTY)]
    assert tool_grammar(tok.g, ToolSyntax.named("function_gemma"), dotted, "auto", True) is None
    assert tool_grammar(tok.g, ToolSyntax.named("pythonic"), dotted, "auto", True) is not None
    assert tool_grammar(tok.g, ToolSyntax.named("pythonic"), [tool("web-search", EMPTY)], "auto", True) is None


@pytest.mark.parametrize("name", FORMATS)
def test_every_forced_opening_is_a_prefix_the_grammar_takes(tok: Tok, name: str) -> None:
    """``ToolSyntax.prefill`` (what the prompt ends with for a forced tool_choice) must be the
    start of a call the grammar admits: the worker feeds it to the matcher first."""
    syntax = ToolSyntax.named(name)
    for only in (None, "get_weather"):
        opening = syntax.prefill(only)
        assert opening is not None and opening.startswith(syntax.start)
        choice = {"name": only} if only else "required"
        m = tok.g.matcher(grammar(tok, name, SCALAR_TOOLS, choice, True))
        ids = tok.ids(opening)
        assert m.try_consume_tokens(ids) == len(ids), opening
        assert written(tok, name).startswith(opening)


# -- written the way the format's models write calls: each must be admitted and read back exactly


def _j(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def _raw(v: Any) -> str:
    return v if isinstance(v, str) else _j(v)


def _xml_params(args: dict[str, Any], fmt: str, value: Any = _raw) -> str:
    return "".join(fmt.replace("@K", k).replace("@V", value(v)) for k, v in args.items())


GEMMA_QUOTE = '<|"|>'


def _gemma(args: dict[str, Any], quote: str) -> str:
    return ",".join(f"{k}:{quote}{v}{quote}" if isinstance(v, str) else f"{k}:{_j(v)}" for k, v in args.items())


WRITERS: dict[str, Any] = {
    "json_tools": lambda n, a: f"<tool_call>\n{_j({'name': n, 'arguments': a})}\n</tool_call>",
    "qwen3_coder": lambda n, a: (
        f"<tool_call>\n<function={n}>\n"
        + _xml_params(a, "<parameter=@K>\n@V\n</parameter>\n")
        + "</function>\n</tool_call>"
    ),
    "glm47": lambda n, a: (
        f"<tool_call>{n}" + _xml_params(a, "<arg_key>@K</arg_key><arg_value>@V</arg_value>") + "</tool_call>"
    ),
    "longcat": lambda n, a: (
        "<longcat_tool_call>"
        + (
            n + _xml_params(a, "<longcat_arg_key>@K</longcat_arg_key><longcat_arg_value>@V</longcat_arg_value>")
            if a
            else _j({"name": n, "arguments": {}})
        )
        + "</longcat_tool_call>"
    ),
    "minimax_m2": lambda n, a: (
        f'<minimax:tool_call>\n<invoke name="{n}">\n'
        + _xml_params(a, '<parameter name="@K">@V</parameter>\n')
        + "</invoke>\n</minimax:tool_call>"
    ),
    "minicpm5": lambda n, a: f'<function name="{n}">' + _xml_params(a, '<param name="@K">@V</param>') + "</function>",
    "muse_spark": lambda n, a: (
        f'<atem:function_calls>\n<atem:invoke name="{n}">\n'
        + _xml_params(a, '<atem:parameter name="@K">@V</atem:parameter>\n', _j)
        + "</atem:invoke>\n</atem:function_calls>"
    ),
    "kimi_k2": lambda n, a: (
        f"<|tool_calls_section_begin|><|tool_call_begin|>functions.{n}:3"
        f"<|tool_call_argument_begin|>{_j(a)}<|tool_call_end|><|tool_calls_section_end|>"
    ),
    "kimi_k3": lambda n, a: (
        f'<|open|>tools<|sep|>\n<|open|>call tool="{n}" index="1"<|sep|>\n'
        f'<|open|>json type="object"<|sep|>{_j(a)}<|close|>json<|sep|>\n<|close|>call<|sep|>\n<|close|>tools<|sep|>'
    ),
    "gemma4": lambda n, a: "<|tool_call>call:" + n + "{" + _gemma(a, GEMMA_QUOTE) + "}<tool_call|>",
    "function_gemma": lambda n, a: f"<start_function_call>call:{n}{{{_gemma(a, '<escape>')}}}<end_function_call>",
    "pythonic": lambda n, a: (
        f"<|tool_call_start|>[{n}(" + ", ".join(f"{k}={_j(v)}" for k, v in a.items()) + ")]<|tool_call_end|>"
    ),
}
WRITERS["laguna"] = WRITERS["glm47"]
TRICKY = ["Köln", "a<b>c", "x\ny", "</p", "Null!", "a,b:c", "{x}", "'q'", '"q"', "tab\tx", "日本", "a=b c"]


def mistral_writer(tok: Tok) -> Any:
    if tok.g.is_special("[ARGS]"):
        return lambda n, a: f"[TOOL_CALLS]{n}[ARGS]{_j(a)}"
    return lambda n, a: f"[TOOL_CALLS][{_j({'name': n, 'arguments': a})}]"


def random_call(rng: random.Random, name: str, scalar_only: bool) -> tuple[str, dict[str, Any]]:
    """A random valid call, its arguments in the schema's property order."""
    fn = rng.choice(["get_weather", "get_time"] if scalar_only else ["get_weather", "get_time", "tag"])
    cities = [c for c in TRICKY if not (name == "function_gemma" and "}" in c)]
    maybe: dict[str, Any] = {
        "unit": rng.choice(["celsius", "fahrenheit"]),
        "detailed": rng.choice([True, False]),
        "ratio": rng.choice([0, 1, 0.5, 0.25]),
    }
    if fn == "get_weather":
        args = {"city": rng.choice(cities), "days": rng.randint(1, 14)}
        args.update({k: v for k, v in maybe.items() if rng.random() < 0.5})
        return fn, args
    if fn == "tag":
        args = {"labels": rng.sample(["ab", "<x>", "日本", 'q"r', "a b"], rng.randint(0, 2))}
        if rng.random() < 0.5:
            args["opts"] = {"x": rng.randint(-99, 99)}
        return fn, args
    return fn, {}


@pytest.mark.parametrize("name", FORMATS)
def test_calls_written_as_the_models_write_them_are_admitted_and_read_back_exactly(tok: Tok, name: str) -> None:
    """Independent of the grammar: each format's calls written out by hand (a few of them, with
    text that looks like markup, quotes, newlines), in one answer or parallel, must all be
    admitted, and the parser must read back exactly the arguments written."""
    write = mistral_writer(tok) if name == "mistral" else WRITERS[name]
    scalar = name in SCALAR_ONLY
    tools = SCALAR_TOOLS if scalar else TOOLS
    rng = random.Random(f"written-{name}")
    single = grammar(tok, name, tools, "required", False)
    several = grammar(tok, name, tools, "auto", True)
    for _ in range(20):
        fn, args = random_call(rng, name, scalar)
        text = write(fn, args)
        assert admits(tok, single, text), text
        (call,) = [e for e in calls_in(name, tools, text, "", False) if isinstance(e, dict)]
        assert (call["name"], json.loads(call["arguments"])) == (fn, args), text
        if name == "mistral":  # no end marker: its parallel calls share one block, tested below
            continue
        fn2, args2 = random_call(rng, name, scalar)
        answer = "Sure. " + text + "\n" + write(fn2, args2) + " Done."
        assert admits(tok, several, answer), answer
        calls = [e for e in calls_in(name, tools, answer, "", True) if isinstance(e, dict)]
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [(fn, args), (fn2, args2)]


def test_mistral_parallel_calls_share_the_answer(tok: Tok) -> None:
    write = mistral_writer(tok)
    g = grammar(tok, "mistral", TOOLS, "required", True)
    a, b = ("get_time", {}), ("get_weather", {"city": "Köln", "days": 2})
    if tok.g.is_special("[ARGS]"):
        text = write(*a) + write(*b)
    else:
        text = "[TOOL_CALLS][" + ", ".join(_j({"name": n, "arguments": x}) for n, x in (a, b)) + "]"
    assert admits(tok, g, text), text
    calls = [e for e in calls_in("mistral", TOOLS, text, "", True) if isinstance(e, dict)]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [a, b]


@pytest.mark.parametrize("name", ["glm47", "longcat"])
def test_glm_calls_take_glm45s_newlines_too(tok: Tok, name: str) -> None:
    p = "" if name == "glm47" else "longcat_"
    text = (
        f"<{p}tool_call>get_weather\n<{p}arg_key>city</{p}arg_key>\n<{p}arg_value>Köln</{p}arg_value>\n"
        f"<{p}arg_key>days</{p}arg_key>\n<{p}arg_value>3</{p}arg_value>\n</{p}tool_call>"
    )
    assert admits(tok, grammar(tok, name, SCALAR_TOOLS, "required", False), text)
    (call,) = [e for e in calls_in(name, SCALAR_TOOLS, text, "", False) if isinstance(e, dict)]
    assert json.loads(call["arguments"]) == {"city": "Köln", "days": 3}


def test_a_named_function_alone_is_held_even_beside_a_tool_the_format_cannot_hold(tok: Tok) -> None:
    """tool_choice naming a function with parallel_tool_calls false: only that function's call
    can be written, so another tool's schema the format can't hold doesn't matter."""
    from worker.grammar import tool_grammar

    tools = [*SCALAR_TOOLS, tool("tag", TAG)]  # tag's nested values can't be held in gemma4
    syntax = ToolSyntax.named("gemma4")
    assert tool_grammar(tok.g, syntax, tools, {"name": "get_weather"}, True) is None
    assert tool_grammar(tok.g, syntax, tools, "required", False) is None
    g = tool_grammar(tok.g, syntax, tools, {"name": "get_weather"}, False)
    assert g is not None
    assert admits(tok, g, written(tok, "gemma4"))
    assert not admits(tok, g, written(tok, "gemma4", **{"@D": "70"}))


# Claude Code's tools as it sends them (abridged), and schemas at the edges of what is valid
AGENT_TOOLS = [
    tool(
        "Bash",
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command to execute"},
                "timeout": {"type": "number", "description": "Optional timeout in milliseconds (max 600000)"},
                "description": {"type": "string"},
                "run_in_background": {"type": "boolean"},
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    ),
    tool(
        "Grep",
        {
            "type": "object",
            "properties": {
                "pattern": {"type": "string"},
                "output_mode": {"type": "string", "enum": ["content", "files_with_matches", "count"]},
                "-i": {"type": "boolean"},
                "-A": {"type": "number"},
                "head_limit": {"type": "number"},
            },
            "required": ["pattern"],
            "additionalProperties": False,
        },
    ),
    tool(
        "TodoWrite",
        {
            "type": "object",
            "properties": {
                "todos": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "content": {"type": "string", "minLength": 1},
                            "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                        },
                        "required": ["content", "status"],
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["todos"],
        },
    ),
    tool("WebFetch", {"type": "object", "properties": {"url": {"type": "string", "format": "uri"}}}),
]
ODD_TOOLS = [
    tool("a", {"type": "object", "properties": {"x": {"type": "string", "maxLength": 2.5}}}),
    tool("b", {"type": "object", "properties": {"x": {"type": "string", "enum": "abc"}}}),
    tool("c", {"type": "object", "properties": {"x": True}}),
    tool("d", {"type": "object", "properties": {"x": {}}, "required": ["x"]}),
    tool("e", {"type": "object", "properties": {"x": {"type": "string", "enum": [1, 2]}}}),
    tool("f", {"type": "object", "properties": {"x": {"$ref": "#/$defs/X"}}, "$defs": {"X": {"type": "integer"}}}),
    {"type": "function", "function": {"name": "g"}},
]


@pytest.mark.parametrize("name", FORMATS)
def test_agent_and_odd_schemas_give_a_grammar_or_none_never_an_error(tok: Tok, name: str) -> None:
    """Whatever the gateway lets through (``check_tool_schema``) gets a grammar that compiles
    or None (parsed only), never an exception; what it refuses (a 400 there) is refused here
    the same way."""
    from shared.grammar import GrammarError, check_tool_schema
    from worker.grammar import tool_grammar

    syntax = ToolSyntax.named(name)
    compiled = 0
    for tools in [AGENT_TOOLS, *([t] for t in AGENT_TOOLS), *([t] for t in ODD_TOOLS)]:
        try:
            for t in tools:
                check_tool_schema(t["function"].get("parameters"), "tools")
        except GrammarError:
            with pytest.raises(GrammarError):
                tool_grammar(tok.g, syntax, tools, "auto", True)
            continue
        for choice in ("auto", "required", {"name": tools[0]["function"]["name"]}):
            g = tool_grammar(tok.g, syntax, tools, choice, True)
            if g is not None:
                assert not tok.g.matcher(g).is_error()
                compiled += 1
    assert compiled  # Bash alone (strings, a number, a boolean) is held in every format
    # Claude Code's tools together: all but the formats that can't write TodoWrite's array of
    # objects (gemma's) or Grep's "-i" parameter (pythonic) hold them
    held = tool_grammar(tok.g, syntax, AGENT_TOOLS, "auto", True) is not None
    assert held == (name not in {"gemma4", "function_gemma", "pythonic"})


CODE = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "tag": {"type": "string", "pattern": "x/y", "maxLength": 6},
    },
    "required": ["code"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("name", sorted(RAW | {"gemma4", "function_gemma"}))
def test_a_raw_string_holds_its_pattern(tok: Tok, name: str) -> None:
    """A string kept raw is held to its ``pattern`` (searched, as JSON Schema does), slashes
    and all; sampled values validate."""
    tools = [tool("f", CODE)]
    g = grammar(tok, name, tools, "required", False)
    write = WRITERS[name]
    assert admits(tok, g, write("f", {"code": "ABC", "tag": "ax/yb"}))
    for bad in ({"code": "abc"}, {"code": "ABCD"}, {"code": "ABC", "tag": "xy"}):
        assert not admits(tok, g, write("f", bad)), bad
    rng = random.Random(name)
    for _ in range(8):
        answer = tok.text(sample(tok, g, "", rng))
        (call,) = [e for e in calls_in(name, tools, answer, "", False) if isinstance(e, dict)]
        jsonschema.validate(json.loads(call["arguments"]), CODE)
