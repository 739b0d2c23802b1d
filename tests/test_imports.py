"""The import graph of `common/` has layers: no cycle, and no import of a `common` module placed
inside a function (the usual way to hide one). Read with `ast`, so nothing is imported here."""
from __future__ import annotations

import ast
import sys

from common import workspace

COMMON = workspace.project_root() / "common"
MODULES = {p.stem for p in COMMON.glob("*.py") if p.stem != "__init__"}
# Importable before anything is installed: the notebooks' first cell runs them in a bare Python.
STDLIB_ONLY = ("workspace", "bootstrap")


def _common_imports(node: ast.AST) -> set[str]:
    if isinstance(node, ast.ImportFrom) and node.module == "common":
        return {alias.name for alias in node.names if alias.name in MODULES}
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("common."):
        return {node.module.split(".")[1]}
    if isinstance(node, ast.Import):
        return {a.name.split(".")[1] for a in node.names if a.name.startswith("common.")}
    return set()


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(imports at module level, imports inside functions) of every module."""
    top, inner = {}, {}
    for name in MODULES:
        tree = ast.parse((COMMON / f"{name}.py").read_text())
        top[name] = set().union(*(_common_imports(node) for node in tree.body))
        functions = [n for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inner[name] = set().union(set(), *(_common_imports(sub) for f in functions
                                           for sub in ast.walk(f)))
    return top, inner


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as a path [a, b, ..., a], or [] (depth-first search, colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_cycle_finder_finds_a_hand_made_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    top, inner = _graph()
    merged = {name: top[name] | inner[name] for name in MODULES}
    assert _find_cycle(merged) == []


def test_no_common_import_inside_a_function():
    _, inner = _graph()
    assert {name: targets for name, targets in inner.items() if targets} == {}


def test_bootstrap_modules_need_only_the_standard_library():
    for name in STDLIB_ONLY:
        tree = ast.parse((COMMON / f"{name}.py").read_text())
        roots = {alias.name.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.Import) for alias in node.names}
        roots |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module
                  and not _common_imports(node)}
        roots -= {"__future__", "common"}
        # pip vendors packaging for a bare venv; see bootstrap._requirement_parser
        outside = sorted(roots - set(sys.stdlib_module_names) - {"packaging", "pip"})
        assert outside == [], f"{name} imports {outside}"
        assert _graph()[0][name] <= set(STDLIB_ONLY), f"{name} imports {_graph()[0][name]}"
