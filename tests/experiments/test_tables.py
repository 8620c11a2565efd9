"""CSV and markdown tables (llm_lab/experiments/tables.py)."""

from __future__ import annotations

from llm_lab.experiments.tables import format_value, markdown_table, read_csv, write_csv


def test_csv_round_trip_keeps_column_order_and_blanks_none(tmp_path):
    rows = [{"b": 1, "a": 0.5}, {"a": None, "b": 2, "c": "x"}]
    path = write_csv(tmp_path / "sub" / "t.csv", rows)
    assert path.read_text().splitlines()[0] == "b,a,c"
    assert read_csv(path) == [{"b": "1", "a": "0.5", "c": ""}, {"b": "2", "a": "", "c": "x"}]


def test_markdown_table_aligns_and_formats():
    text = markdown_table([{"name": "x", "v": 1.23456789, "ok": True}, {"name": "long", "v": None}], digits=3)
    lines = text.splitlines()
    assert lines[0] == "| name | v    | ok  |"
    assert lines[1] == "|------|------|-----|"
    assert lines[2] == "| x    | 1.23 | yes |"
    assert lines[3] == "| long | -    | -   |"


def test_format_value_cases():
    assert format_value(float("nan")) == "-"
    assert format_value(1.5e-5, digits=3) == "1.50e-05"
    assert format_value(123456.0) == "123456"
    assert format_value(0.0) == "0"
