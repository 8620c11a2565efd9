"""Dependencies run one way: no import circle among ``llm_lab`` modules, counting imports inside functions.

A function-level import is still a run-time dependency: it only hides the circle until the function runs. Type-only
imports (under ``if TYPE_CHECKING:``) are not run and do not count. An edge goes from a module to the module it
imports (``from pkg import name`` counts ``pkg.name`` when that is a module, else ``pkg``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import llm_lab

ROOT = Path(llm_lab.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The ``llm_lab`` modules that ``tree`` imports at run time (anywhere but under ``if TYPE_CHECKING:``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in modules and name != module}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    return {
        name: _imports(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py", modules)
        for name, path in files.items()
    }


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return circles


def test_the_graph_sees_function_level_imports() -> None:
    """The checker itself: a circle made only by an import inside a function is found; a TYPE_CHECKING one is not."""
    modules = {"llm_lab.a", "llm_lab.b", "llm_lab.c"}
    a = ast.parse("import llm_lab.b\n")
    b = ast.parse("def f():\n    from llm_lab.a import thing\n")
    c = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llm_lab.a import X\n")
    graph = {
        "llm_lab.a": _imports(a, "llm_lab.a", False, modules) | {"llm_lab.c"},
        "llm_lab.b": _imports(b, "llm_lab.b", False, modules),
        "llm_lab.c": _imports(c, "llm_lab.c", False, modules),
    }
    assert graph["llm_lab.c"] == set()
    assert import_circles(graph) == [["llm_lab.a", "llm_lab.b"]]


def test_no_import_circles_among_llm_lab_modules() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    circles = import_circles(graph)
    if circles:
        listed = "\n".join(" <-> ".join(circle) for circle in circles)
        pytest.fail(f"import circles (make each dependency run one way):\n{listed}")
