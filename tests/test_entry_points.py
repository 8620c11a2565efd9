"""Library and entry points apart: argument parsing lives in ``llm_lab/cli`` and ``scripts/`` only."""

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "llm_lab"


def _imports_argparse(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "argparse" for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def test_argparse_only_under_cli():
    modules = [p for p in LIBRARY.rglob("*.py") if "cli" not in p.relative_to(LIBRARY).parts[:1]]
    assert len(modules) > 50  # the walk found the library
    offenders = sorted(str(p.relative_to(LIBRARY.parent)) for p in modules if _imports_argparse(p))
    assert offenders == [], f"argparse imported outside llm_lab/cli: {offenders}"


def test_the_check_sees_every_import_form(tmp_path):
    for source, expected in [("import argparse\n", True), ("from argparse import Namespace\n", True),
                             ("def f():\n    import argparse as ap\n", True), ("import argparsex\n", False),
                             ("x = 'import argparse'\n", False)]:  # fmt: skip
        path = tmp_path / "m.py"
        path.write_text(source)
        assert _imports_argparse(path) is expected, source
