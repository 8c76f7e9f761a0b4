"""The package's import graph, built statically (ast over python/nodedb_cluster).

Two rules (issue 14 part 5): the runtime (everything a node or an embedding process loads) has
no import cycle, and it never imports a tool (bench, demo, the local-cluster harness, the fault
harness, the command line), not even lazily inside a function: a production node must not load
the bench. Tools may import the runtime. Imports under `if TYPE_CHECKING:` are collected as their
own kind: they cannot create an import-time cycle, but a type-only cycle is a design smell too,
so the runtime must have none of those either.

A `from pkg import name` counts as importing the submodule `pkg.name` when one exists, else
`pkg` (as import-linter does); a submodule's implicit import of its parent package is not an
edge (every submodule has it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import nodedb_cluster

PACKAGE: Final = "nodedb_cluster"
ROOT: Final = Path(nodedb_cluster.__file__).resolve().parent
TOOLS: Final = (
    "nodedb_cluster.bench",
    "nodedb_cluster.demo",
    "nodedb_cluster.localcluster",
    "nodedb_cluster.faults",
    "nodedb_cluster.cli",
    "nodedb_cluster.cli_support",
    "nodedb_cluster.admin_cli",
    "nodedb_cluster.placement_cli",
)
"""Modules (and packages, with everything under them) outside the runtime."""

EdgeKind = Literal["module", "function", "type_checking"]


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    kind: EdgeKind
    line: int


def module_names() -> dict[str, Path]:
    """Every module of the package: .py sources, and compiled modules by their stubs (.pyi)."""
    names: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if path.suffix == ".py" or name not in names:
            names[name] = path
    return names


MODULES: Final = module_names()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _owner(name: str) -> str | None:
    """The package module a dotted name lives in (the longest known prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    base = node.module or ""
    if node.level:
        parent = package
        for _ in range(node.level - 1):
            parent = parent.rpartition(".")[0]
        base = f"{parent}.{base}" if base else parent
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        yield sub if sub in MODULES else base


def edges_of(name: str, path: Path) -> Iterator[Edge]:
    """Every import in the module, with where it sits (top level, a function, TYPE_CHECKING)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]

    def walk(node: ast.AST, kind: EdgeKind) -> Iterator[Edge]:
        for child in ast.iter_child_nodes(node):
            child_kind = kind
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk_stmt(stmt, "type_checking")
                for stmt in child.orelse:
                    yield from walk_stmt(stmt, kind)
                continue
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                child_kind = "type_checking" if kind == "type_checking" else "function"
            yield from walk_stmt(child, child_kind)

    def walk_stmt(node: ast.AST, kind: EdgeKind) -> Iterator[Edge]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(node, package):
                owner = _owner(target) if target.startswith(PACKAGE) else None
                if owner is not None and owner != name:
                    yield Edge(name, owner, kind, node.lineno)
        yield from walk(node, kind)

    top: EdgeKind = "type_checking" if path.suffix == ".pyi" else "module"  # stubs: types only
    yield from walk(ast.parse(path.read_text(), str(path)), top)


EDGES: Final = [edge for name, path in MODULES.items() for edge in edges_of(name, path)]


def is_tool(name: str) -> bool:
    return any(name == tool or name.startswith(tool + ".") for tool in TOOLS)


def cycles(nodes: set[str], edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a self-loop."""
    graph: dict[str, set[str]] = {n: set() for n in nodes}
    for e in edges:
        if e.source in nodes and e.target in nodes:
            graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


RUNTIME: Final = {name for name in MODULES if not is_tool(name)}


def test_the_graph_sees_every_kind_of_import() -> None:
    # Guards the collector itself: each kind is present in today's package, so a collector that
    # silently lost one (and so passed every rule below) would fail here.
    kinds = {e.kind for e in EDGES}
    assert kinds == {"module", "function", "type_checking"}
    assert any(
        e.source == "nodedb_cluster.cli" and e.target == "nodedb_cluster.bench" for e in EDGES
    )
    assert "nodedb_cluster.routing._kernels" in MODULES  # compiled, known by its stub


def test_the_cycle_finder_finds_a_cycle() -> None:
    made_up = [
        Edge("a", "b", "module", 1),
        Edge("b", "c", "function", 1),
        Edge("c", "a", "module", 1),
    ]
    assert cycles({"a", "b", "c", "d"}, made_up) == [["a", "b", "c"]]


def test_no_import_cycle_among_runtime_modules() -> None:
    executed = [e for e in EDGES if e.kind != "type_checking"]
    assert cycles(RUNTIME, executed) == []


def test_no_type_only_cycle_among_runtime_modules() -> None:
    assert cycles(RUNTIME, EDGES) == []


def test_no_runtime_module_imports_a_tool() -> None:
    offending = [
        f"{e.source} imports {e.target} ({e.kind}, line {e.line})"
        for e in EDGES
        if e.source in RUNTIME and is_tool(e.target)
    ]
    assert offending == []


def test_tools_have_no_cycle_either() -> None:
    executed = [e for e in EDGES if e.kind != "type_checking"]
    assert cycles(set(MODULES), executed) == []
