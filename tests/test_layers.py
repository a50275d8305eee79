"""DESIGN's layers, read from the source: profiler and traces import neither simulator nor planner, simulator
imports neither planner nor reports, and no package's modules import each other in a circle, counting the
imports inside functions (they run too), not those only for type checking."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from needs import REPO

PACKAGES = ("profiler", "traces", "simulator", "planner", "reports", "runtime")
FORBIDDEN = {"profiler": {"simulator", "planner", "reports"}, "traces": {"simulator", "planner", "reports"},
             "simulator": {"planner", "reports"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Project modules ``path`` imports anywhere but under ``if TYPE_CHECKING:`` (``from pkg import mod``: the
    module, not the package it is taken from)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for b in node.body for n in ast.walk(b)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            found = {m for m in subs if is_module(m)}
            out |= found | ({node.module} if found != subs else set())
    return {m for m in out if m.split(".")[0] in PACKAGES}


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {name: {m for m in imports(path) if m in files and m != name} for name, path in files.items()}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_import_no_higher_one(package):
    bad = sorted(f"{mod} imports {dep}" for mod, deps in graph().items() if mod.split(".")[0] == package
                 for dep in deps if dep.split(".")[0] in FORBIDDEN[package])
    assert not bad, bad


def cycle_in(nodes: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the modules around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(nodes.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(nodes):
        if n not in state and (found := visit(n)):
            return found
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_itself_in_a_circle(package):
    g = graph()
    inside = {m: {d for d in deps if d.split(".")[0] == package} for m, deps in g.items()
              if m.split(".")[0] == package}
    assert cycle_in(inside) is None, " -> ".join(cycle_in(inside))


def test_the_checks_see_a_cycle_and_a_forbidden_import():
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) is None
    assert "planner.plan" in imports(REPO / "planner" / "cli.py") or "planner.plan" in str(graph()["planner.cli"])
