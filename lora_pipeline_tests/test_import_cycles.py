"""No import cycles among lora_pipeline's modules, counting imports inside functions too.

A cycle hidden in a function (`from x import y` inside a factory) still ties two modules
together: neither can be read, tested or moved without the other. The import-linter contracts
in pyproject.toml check which way packages may depend, not cycles between any two modules, so
this walks the source with `ast` and sees every import statement wherever it stands
(TYPE_CHECKING blocks included).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import lora_pipeline

PACKAGE_ROOT = Path(lora_pipeline.__file__).parent

Graph = dict[str, set[str]]


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package folder `root`."""
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported_names(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    """The dotted names an import statement may refer to (a `from m import x` may import the
    submodule m.x or a name defined in m: both are returned, the caller keeps what exists)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join([*base, *([node.module] if node.module else [])])
    else:
        prefix = node.module or ""
    return [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]


def _owning_module(name: str, modules: dict[str, Path]) -> str | None:
    # `a.b.c` where only `a.b` is a module refers to a name inside `a.b`.
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path) -> Graph:
    """Module -> the package's modules it imports anywhere in its source."""
    modules = module_names(root)
    graph: Graph = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in _imported_names(module, node, path.name == "__init__.py"):
                    owner = _owning_module(name, modules)
                    if owner is not None:
                        targets.add(owner)
        # A package's __init__ is imported with every submodule; it is not a dependency.
        graph[module] = {t for t in targets if t != module and t != root.name}
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _describe(graph: Graph, component: list[str]) -> str:
    members = set(component)
    return "\n".join(f"  {m} -> {', '.join(sorted(graph[m] & members))}" for m in component)


def test_no_import_cycles() -> None:
    graph = import_graph(PACKAGE_ROOT)
    found = cycles(graph)
    assert not found, "import cycles (move the shared part or the factory to its own module):\n" + (
        "\n".join(_describe(graph, component) for component in found)
    )


def test_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("from pkg.sub.b import thing\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from . import a\n    return a\n")
    (package / "c.py").write_text("from pkg.sub import a\n")
    assert cycles(import_graph(package)) == [["pkg.sub.a", "pkg.sub.b"]]
