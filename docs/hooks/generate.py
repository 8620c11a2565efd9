"""MkDocs hook: the reference pages are generated from the code at build time, so they cannot drift from it.

A page asks for generated text with a marker on a line of its own:

* ``<!-- generated: cli -->``: every ``llm-lab`` command's ``--help``, walked from ``llm_lab.cli.build_parser()``
  through ``LabParser.subcommands``;
* ``<!-- generated: config -->``: the keys of every config dataclass (run config sections and ``SamplingConfig``):
  name, type, default and the help from the class's ``Attributes:`` docstring section (``SamplingConfig``'s from
  its registered ``SamplingParam``\\ s);
* ``<!-- generated: docstring MODULE -->``: a module's docstring, verbatim in a text block (file formats whose one
  owner module documents them).

``CONTRIBUTING.md`` (at the repository root, where people look for it) becomes the site's ``contributing.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import re
import sys
import typing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_MARKER = re.compile(r"^<!-- generated: (\w+)(?: ([\w.]+))? -->$", re.M)
HELP_WIDTH = 100


# ------------------------------------------------------------------------------------------------------- CLI
def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, parser)]
    for name, child in getattr(parser, "subcommands", {}).items():
        found += _walk(child, (*path, name))
    return found


def cli_reference() -> str:
    from llm_lab.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)  # argparse wraps to the terminal; the page is the same everywhere
    try:
        parser = build_parser()
        out = []
        for path, sub in _walk(parser, ("llm-lab",)):
            sub.prog = " ".join(path)
            level = "#" * min(len(path) + 1, 4)
            out += [f"{level} `{' '.join(path)}`", "", "```text", sub.format_help().rstrip(), "```", ""]
        return "\n".join(out)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


# ---------------------------------------------------------------------------------------------------- config
def attribute_help(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style class docstring, as ``{name: one-line help}``."""
    doc = inspect.getdoc(cls) or ""
    found: dict[str, str] = {}
    inline = re.match(r"^.*?Attributes:\s*(\w+):\s*(.+)$", doc.replace("\n", " "), re.S)
    lines = doc.splitlines()
    if "Attributes:" not in lines and "Attributes:" in doc and inline:  # "Attributes: name: help" on one line
        return {inline.group(1): inline.group(2).strip()}
    try:
        start = lines.index("Attributes:") + 1
    except ValueError:
        return found
    name = None
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        m = re.match(r"^ {4}(\w[\w, ]*):\s*(.*)$", line)
        if m:
            name = m.group(1)
            found[name] = m.group(2).strip()
        elif name and line.strip():
            found[name] += " " + line.strip()
    for key in [k for k in found if "," in k]:  # "low, high: the range" documents two fields
        for part in key.split(","):
            found[part.strip()] = found[key]
    return found


def _type_name(tp: Any) -> str:
    if isinstance(tp, str):
        return tp
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _rst_to_markdown(text: str) -> str:
    """Docstrings are written in reST's inline style (````x````, ``:class:`~a.B` ``); the tables are Markdown."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _cell(text: str) -> str:
    return _rst_to_markdown(text).replace("|", "\\|").replace("\n", " ")


def _json_value(value: Any) -> str:
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def dataclass_table(cls: type) -> str:
    hints = typing.get_type_hints(cls, include_extras=False)
    helps = attribute_help(cls)
    rows = ["| key | type | default | what it is |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        else:
            default = "required"
        shown = _json_value(default)
        rows.append(
            f"| `{field.name}` | `{_cell(_type_name(hints.get(field.name, field.type)))}` | `{_cell(shown)}` | "
            f"{_cell(helps.get(field.name, ''))} |"
        )
    return "\n".join(rows)


def sampling_table() -> str:
    from llm_lab.core.decode.sampling import sampling_params

    rows = ["| key | type | default | range | what it is |", "|---|---|---|---|---|"]
    for param in sampling_params():
        low = "" if param.low is None else ("(" if param.low_open else "[") + f"{param.low:g}"
        high = "" if param.high is None else f"{param.high:g}" + (")" if param.high_open else "]")
        span = f"{low or '(-inf'}, {high or 'inf)'}"
        default = "off" if param.default is None else repr(param.default)
        rows.append(
            f"| `{param.name}` | `{param.kind.__name__}` | `{default}` | `{span}` | {_cell(param.help)} |"
        )
    return "\n".join(rows)


def config_reference() -> str:
    from llm_lab.core.train.run_config import RunConfig

    out = []
    for section, cls in RunConfig.SECTIONS.items():
        out += [
            f"## `{section}`: `{cls.__module__}.{cls.__name__}`",
            "",
            _rst_to_markdown((inspect.getdoc(cls) or "").split("\n\n")[0].split("Attributes:")[0].strip()),
            "",
            dataclass_table(cls),
            "",
        ]
    out += [
        "## Sampling: `llm_lab.core.decode.SamplingConfig`",
        "",
        "The settings of `generate`, `stream`, `llm-lab sample` (as `--top-k` and so on) and the server's request "
        "fields, one per registered logits processor, in the order they apply:",
        "",
        sampling_table(),
        "",
    ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- docstring
def module_docstring(name: str) -> str:
    module = importlib.import_module(name)
    return f"From the docstring of `{name}`:\n\n```text\n{inspect.getdoc(module) or ''}\n```\n"


# ----------------------------------------------------------------------------------------------------- hooks
def _generate(kind: str, arg: str | None) -> str:
    if kind == "cli":
        return cli_reference()
    if kind == "config":
        return config_reference()
    if kind == "docstring" and arg:
        return module_docstring(arg)
    raise ValueError(f"unknown generated-text marker {kind!r}")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return _MARKER.sub(lambda m: _generate(m.group(1), m.group(2)), markdown)


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    # Its links are written from the repository root (where GitHub shows it); on the site it sits at the docs root.
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8").replace("](docs/", "](")
    files.append(File.generated(config, "contributing.md", content=text))
    return files
