"""Pure helpers of the per-parameter tool grammars (worker/toolvalues.py): JSON Schema patterns
as Lark regexes, and the object schemas a per-parameter layout can hold."""

from __future__ import annotations

import pytest

from worker.toolvalues import Inexpressible, object_schema, regex_escape, searched


@pytest.mark.parametrize(
    ("pattern", "regex"),
    [
        ("^[A-Z]{3}$", "(?:[A-Z]{3})"),  # anchored both ends: the whole value
        ("^ab", "(?:ab)(.|\\n)*"),  # a prefix
        ("ab$", "(.|\\n)*(?:ab)"),  # a suffix
        ("x/y", "(.|\\n)*(?:x\\/y)(.|\\n)*"),  # found anywhere; the slash escaped for Lark
        ("a\\$", "(.|\\n)*(?:a\\$)(.|\\n)*"),  # an escaped dollar is text, not an anchor
        ("a\\\\$", "(.|\\n)*(?:a\\\\)"),  # an escaped backslash, then the anchor
        ("a\\/b", "(.|\\n)*(?:a\\/b)(.|\\n)*"),  # an escaped slash stays as it is
    ],
)
def test_a_pattern_is_searched_as_json_schema_does(pattern: str, regex: str) -> None:
    assert searched(pattern) == regex


def test_literals_in_a_regex_escape_what_lark_and_regex_syntax_would_read() -> None:
    assert regex_escape("</tool_call>") == "<\\/tool_call>"  # "<" never escaped: "\\<" is a word boundary
    assert regex_escape("[TOOL_CALLS]") == "\\[TOOL_CALLS\\]"
    assert regex_escape("<|open|>") == "<\\|open\\|>"


def test_object_schemas_a_per_parameter_layout_holds() -> None:
    props, required = object_schema({"type": "object", "properties": {"a": {}}, "required": ["a"]})
    assert list(props) == ["a"] and required == ["a"]
    for bad in (
        {"type": "object", "properties": {"a": {}}, "minProperties": 1},  # an object keyword
        {"type": "object", "properties": {"a": {}}, "required": ["b"]},  # required but not declared
        {"type": "array"},
        {"type": "object", "properties": ["a"]},
        {"type": "object", "properties": {"a": {}}, "required": [{"a": 1}]},
    ):
        with pytest.raises(Inexpressible):
            object_schema(bad)
