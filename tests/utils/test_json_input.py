"""Strict JSON: duplicate keys, non-finite constants and deep nesting are refused with a clean ValueError."""

from __future__ import annotations

import pytest

from llm_lab.utils.json_input import load_json_file, loads_strict


def test_plain_json_parses_like_json_loads():
    assert loads_strict('{"a": [1, 2.5, "x", null, true], "b": {"c": {}}}') == {
        "a": [1, 2.5, "x", None, True],
        "b": {"c": {}},
    }


def test_duplicate_key_is_refused_with_its_name():
    with pytest.raises(ValueError, match=r"cfg.json: duplicate key 'lr'"):
        loads_strict('{"lr": 0.001, "lr": 3.0}', what="cfg.json")


def test_duplicate_key_in_a_nested_object_is_refused():
    with pytest.raises(ValueError, match=r"duplicate key 'x'"):
        loads_strict('{"train": {"x": 1, "x": 1}}')


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_constants_are_refused(constant):
    with pytest.raises(ValueError, match=rf"{constant} is not valid JSON"):
        loads_strict(f'{{"lr": {constant}}}')


def test_deep_nesting_is_refused_before_parsing():
    text = "[" * 200_000 + "]" * 200_000
    with pytest.raises(ValueError, match=r"body: JSON nested deeper than 64 levels"):
        loads_strict(text, what="body")


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = '{"s": "' + "[" * 1000 + '\\" {{{{"}'
    assert loads_strict(text) == {"s": "[" * 1000 + '" {{{{'}


def test_nesting_at_the_limit_parses():
    assert loads_strict("[" * 5 + "]" * 5, max_depth=5) == [[[[[]]]]]
    with pytest.raises(ValueError, match="deeper than 4 levels"):
        loads_strict("[" * 5 + "]" * 5, max_depth=4)


def test_invalid_json_names_line_and_column():
    expected = r"x: not valid JSON \(Expecting property name enclosed in double quotes at line 2, column 6\)"
    with pytest.raises(ValueError, match=expected):
        loads_strict('{"a":\n  1, }', what="x")


def test_bytes_must_be_utf8():
    assert loads_strict(b'{"a": "\xc3\xa9"}') == {"a": "é"}
    with pytest.raises(ValueError, match=r"not UTF-8 text \(byte 7\)"):
        loads_strict(b'{"a": "\xff"}')


def test_load_json_file_names_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"a": 1, "a": 2}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"c.json: duplicate key 'a'"):
        load_json_file(path)
    with pytest.raises(ValueError, match=r"missing.json: file not found"):
        load_json_file(tmp_path / "missing.json")
