"""Grammar construction from response formats and tool schemas (shared.grammar: no MLX, no model)."""

from __future__ import annotations

import json

import pytest

from shared.grammar import (
    GrammarError,
    check_schema,
    check_tool_schema,
    compile_error,
    response_grammar,
    schema_grammar,
    tool_schema,
)


def test_text_and_no_format_are_unconstrained() -> None:
    assert response_grammar(None) is None
    assert response_grammar({"type": "text"}) is None


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "json_object"},
        {"type": "json_schema", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}},
        {"type": "lark", "grammar": 'start: "yes" | "no"'},
    ],
)
def test_formats_compile(fmt: dict[str, object]) -> None:
    grammar = response_grammar(fmt)
    assert grammar is not None and compile_error(grammar) is None


def test_json_layout_is_fixed_in_the_grammar() -> None:
    """The compact layout (no free whitespace) travels inside the grammar itself."""
    grammar = json.loads(schema_grammar({"type": "object"}))
    options = grammar["grammars"][0]["json_schema"]["x-guidance"]
    assert options == {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "propertyNames": {"pattern": "^a"}}, "propertyNames"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "string", "format": "no-such-format"}, "no-such-format"),
        ({"type": "string", "pattern": "(?=a)"}, "look-around"),
        ({"$ref": "#/$defs/gone"}, "/$defs/gone"),
        ({"type": "objectx"}, "objectx"),
    ],
)
def test_a_schema_that_cannot_be_enforced_names_the_keyword(schema: dict[str, object], named: str) -> None:
    with pytest.raises(GrammarError) as e:
        response_grammar({"type": "json_schema", "schema": schema})
    assert e.value.param == "response_format" and named in str(e.value)
    assert str(e.value).startswith("response_format: ")
    with pytest.raises(GrammarError) as e2:
        check_schema(schema, "output_config.format")
    assert e2.value.param == "output_config.format" and named in e2.value.detail


@pytest.mark.parametrize(
    "fmt",
    [{"type": "xml"}, {"type": "json_schema"}, {"type": "json_schema", "schema": []}, {"type": "lark", "grammar": ""}],
)
def test_malformed_formats_are_refused(fmt: dict[str, object]) -> None:
    with pytest.raises(GrammarError) as e:
        response_grammar(fmt)
    assert e.value.param == "response_format"


def test_a_lark_grammar_that_does_not_compile_is_refused() -> None:
    with pytest.raises(GrammarError, match="response_format"):
        response_grammar({"type": "lark", "grammar": "start: undefined_rule"})


def test_tool_schemas_leave_unimplemented_keywords_unenforced_but_refuse_broken_ones() -> None:
    """Tool arguments: a keyword llguidance lacks (uniqueItems) is not enforced rather than
    refusing a client's tools; a schema broken in itself (a dangling $ref) is refused."""
    lenient = tool_schema({"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}})
    assert lenient["x-guidance"]["lenient"] is True
    strict = tool_schema({"type": "object", "properties": {"city": {"type": "string"}}})
    assert "lenient" not in strict["x-guidance"]
    assert tool_schema(None)["type"] == "object" and tool_schema({})["type"] == "object"
    check_tool_schema({"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}, "p")
    with pytest.raises(GrammarError) as e:
        check_tool_schema({"properties": {"a": {"$ref": "#/nowhere"}}}, "tools[0].function.parameters")
    assert e.value.param == "tools[0].function.parameters" and "/nowhere" in e.value.detail


def test_property_order_is_kept() -> None:
    """The grammar writes properties in the schema's order (the cache key must not sort them)."""
    schema = {"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "string"}}}
    grammar = response_grammar({"type": "json_schema", "schema": schema})
    assert grammar is not None
    inner = json.loads(grammar)["grammars"][0]["json_schema"]
    assert list(inner["properties"]) == ["zeta", "alpha"]
