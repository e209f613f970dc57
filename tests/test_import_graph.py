"""The package's import graph: no cycles, and the library never imports the apps.

Read from the source with ``ast`` (nothing is imported), counting every import statement,
including those inside functions: an import moved into a function to dodge a cycle is still a
cycle between the two modules' jobs. Imports under ``if TYPE_CHECKING:`` are left out (they never
run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cgmed"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, here: str, is_package: bool):
    """(module, imported names) of every import statement, relative ones resolved."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, tuple(a.name for a in node.names)
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = graph.setdefault(name, set())
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target, names in _imports(tree, name, path.name == "__init__.py"):
            if not target.startswith("cgmed"):
                continue
            # "from cgmed.data import choices" imports the module cgmed.data.choices
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in files]
            for dep in subs or [target]:
                if dep in files and dep != name:
                    edges.add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    """The check itself: a two-module and a three-module cycle are found, a chain is not."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(cycles(graph)) == [["a", "b"], ["c", "d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_relative_and_function_level_imports_are_counted():
    tree = ast.parse(
        "from . import b\nfrom ..c import d\n"
        "def f():\n    import cgmed.x\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cgmed.hidden\n"
    )
    found = dict(_imports(tree, "cgmed.pkg.a", is_package=False))
    assert found["cgmed.pkg"] == ("b",) and found["cgmed.c"] == ("d",) and "cgmed.x" in found
    assert "cgmed.hidden" not in found


def test_no_import_cycles_in_cgmed():
    graph = import_graph()
    assert len(graph) > 30, "the scan found too few modules"
    found = cycles(graph)
    assert not found, "import cycles (move the shared piece below both users):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


@pytest.mark.parametrize("app", ["experiments", "launch", "tests", "benchmarks"])
def test_the_library_never_imports_the_apps(app):
    offenders = [
        name for name, path in ((module_name(p), p) for p in PACKAGE.rglob("*.py"))
        for target, _ in _imports(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py")
        if target == app or target.startswith(app + ".")
    ]  # fmt: skip
    assert not offenders, offenders


@pytest.mark.parametrize("package", ["cgmed.data", "cgmed.models", "cgmed.train", "cgmed.eval", "cgmed.cg"])
def test_each_subpackage_exports_its_entry_points(package):
    import importlib

    module = importlib.import_module(package)
    assert module.__doc__ and "``" in module.__doc__, f"{package} needs a docstring saying what lives where"
    assert getattr(module, "__all__", None), f"{package} exports nothing"
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"


def test_the_entry_points_named_in_the_docs_import():
    from cgmed.cg import run_cg
    from cgmed.data import build_split, open_source
    from cgmed.eval import parse_choice
    from cgmed.models import init_tiny
    from cgmed.train import train

    assert parse_choice("B", ["no", "yes"]) == "B"
    assert all(callable(f) for f in (run_cg, build_split, open_source, init_tiny, train))
