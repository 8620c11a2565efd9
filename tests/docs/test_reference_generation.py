"""The reference pages are generated from the code (``docs/hooks/generate.py``): every command, every config key and
every sampling setting must reach them, with its help, so a new one cannot be left out of the docs."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from llm_lab.cli import build_parser
from llm_lab.core.decode.sampling import sampling_params
from llm_lab.core.train.run import RunConfig

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("docs_generate", REPO / "docs" / "hooks" / "generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)  # type: ignore[union-attr]


def _command_paths(parser, path=("llm-lab",)):
    yield " ".join(path)
    for name, child in getattr(parser, "subcommands", {}).items():
        yield from _command_paths(child, (*path, name))


def test_cli_reference_has_every_command_and_its_options():
    page = generate.cli_reference()
    headings = re.findall(r"^#+ `([^`]+)`$", page, re.M)
    assert headings == list(_command_paths(build_parser()))
    assert "llm-lab sweep report" in headings and "llm-lab bench time-to-loss" in headings
    train = page.split("# `llm-lab train`", 1)[1].split("\n#", 1)[0]
    for option in ("--config", "--data", "--out", "--set", "--resume", "--overwrite", "--init-from", "--threads"):
        assert option in train, option


@pytest.mark.parametrize("section", list(RunConfig.SECTIONS))
def test_every_config_key_is_documented(section):
    cls = RunConfig.SECTIONS[section]
    helps = generate.attribute_help(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not helps.get(f.name)]
    assert missing == [], f"{cls.__name__}: fields without a line in the docstring's Attributes section: {missing}"
    table = generate.dataclass_table(cls)
    for field in dataclasses.fields(cls):
        assert f"| `{field.name}` |" in table


def test_config_reference_shows_types_defaults_and_sampling_settings():
    page = generate.config_reference()
    assert "| `pos_encoding` | `'learned' \\| 'sinusoidal' \\| 'rope' \\| 'alibi' \\| 'none'` | `\"learned\"` |" in page
    assert '| `loggers` | `tuple[str, ...]` | `["csv"]` |' in page
    for param in sampling_params():
        assert f"| `{param.name}` | `{param.kind.__name__}` |" in page
    assert "``" not in page  # reST literals are turned into Markdown ones


def test_attribute_help_reads_google_style_sections():
    class Example:
        """Something.

        Attributes:
            first: one line.
            second: a line that goes on
                to the next one.
            low, high: both ends.
        """

    assert generate.attribute_help(Example) == {
        "first": "one line.",
        "second": "a line that goes on to the next one.",
        "low, high": "both ends.",
        "low": "both ends.",
        "high": "both ends.",
    }


def test_module_docstring_marker_is_replaced():
    text = "intro\n<!-- generated: docstring llm_lab.core.train.checkpoint -->\nend\n"
    out = generate.on_page_markdown(text, None, None, None)
    assert "<!-- generated" not in out and "format_version" in out and out.startswith("intro\n")
