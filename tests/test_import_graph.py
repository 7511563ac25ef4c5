"""No import cycle among lgesynth's modules, function-local imports included.

The graph: one node per module under ``common/lgesynth`` (a package is its ``__init__.py``), an edge for
every ``import`` / ``from ... import`` anywhere in a module's source (module level, inside functions and
under ``if TYPE_CHECKING``; relative imports resolved against the module's package):

- ``import lgesynth.a.b`` -> ``lgesynth.a.b``;
- ``from lgesynth.a import name`` -> ``lgesynth.a.name`` if that is a module, else ``lgesynth.a`` (the
  package's ``__init__``, whose own imports are its edges, so a re-export is an edge from the package).

Importing ``lgesynth.a.b`` also runs the ``__init__`` of ``lgesynth`` and ``lgesynth.a`` first; those implicit
edges to parent packages are not in the graph (with them every package that re-exports a submodule's
names would be a cycle, and Python initialises parents before children anyway). An import *through* a
package's ``__init__`` is an edge, so a module that takes a name from its own package's ``__init__`` which
re-exports that module is reported as the cycle it is.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

COMMON = Path(__file__).resolve().parents[1] / "common"
PACKAGE = "lgesynth"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` under ``root / package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of ``modules`` that ``name`` (at ``path``) imports anywhere in its source (module doc)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in modules:  # import a.b.c of a non-module c: its package
                    target = target.rpartition(".")[0]
                if target:
                    out.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    out.add(f"{source}.{alias.name}")
                elif source in modules:
                    out.add(source)
    out.discard(name)
    return out


def import_graph(root: Path = COMMON, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(root, package)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (each sorted)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

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
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str]:
    """A shortest cycle through ``start`` (breadth first): ``[start, ..., start]``, or [] when there is none."""
    parent, queue = {start: None}, deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if w == start:
                path = [v]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    return []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component."""
    return [shortest_cycle(graph, component[0]) for component in strongly_connected(graph)]


def test_lgesynth_modules_import_without_cycles():
    graph = import_graph()
    assert "lgesynth.dice" in graph and "lgesynth.engines.base" in graph["lgesynth.engines.inr_eval"]
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_check_sees_function_local_relative_and_package_imports(tmp_path):
    """A toy package: ``a`` imports ``b`` inside a function, ``b`` takes a name of ``c`` through the
    package ``__init__`` (which re-exports ``a``), ``c`` imports ``a`` relatively."""
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from toy.a import f\n")
    (pkg / "a.py").write_text("def f():\n    from toy.sub import b\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from toy import f\n")
    (pkg / "c.py").write_text("from . import a\nfrom .sub.b import *\nimport toy.sub.b.missing\n")
    graph = import_graph(tmp_path, "toy")
    assert graph == {"toy": {"toy.a"}, "toy.a": {"toy.sub.b"}, "toy.sub": set(), "toy.sub.b": {"toy"},
                     "toy.c": {"toy.a", "toy.sub.b"}}
    assert cycles(graph) == [["toy", "toy.a", "toy.sub.b", "toy"]]
    (pkg / "sub" / "b.py").write_text("import numpy\n")
    assert cycles(import_graph(tmp_path, "toy")) == []


def test_every_module_holds_one_job_under_400_lines():
    """A module past ~400 lines is two ideas: split it along its jobs."""
    long = {name: n for name, path in module_files(COMMON, PACKAGE).items()
            if (n := len(path.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"
