"""Imports point one way: no module of the package reaches itself through its imports (counting the ones
inside functions and under TYPE_CHECKING, which hide a cycle rather than remove it)."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import refresher

ROOT = Path(refresher.__file__).resolve().parent


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module in known and node.level == 0:
            # `from pkg import submodule` depends on the submodule; `from pkg import name` on pkg.
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield sub if sub in known else node.module


@functools.cache  # parsing the package once is enough for every test here
def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {dep for dep in imports_of(path, known) if dep != name} for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_finder_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_holds_the_package() -> None:
    graph = import_graph()
    assert "refresher.sandbox.runner" in graph
    assert "refresher.sandbox.server" in graph["refresher.sandbox.shopee"]


def test_the_sandbox_has_no_import_cycle() -> None:
    graph = import_graph()
    sandbox = {name: deps for name, deps in graph.items() if name.startswith("refresher.sandbox")}
    assert cycles({name: deps & set(sandbox) for name, deps in sandbox.items()}) == []


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_graph()) == []
