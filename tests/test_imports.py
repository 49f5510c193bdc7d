"""No import cycle among the project's modules: each module can be read (and changed) knowing only what it imports.

The graph counts every import, the ones inside functions too (a cycle hidden in a function is still a cycle), and
leaves out only `if TYPE_CHECKING:` blocks, which never run.
"""

import ast
from pathlib import Path

from tests.conftest import ROOT

APPS = ("accounts", "chat", "llm", "moonborn_site", "personas", "runs", "web")


def module_files() -> dict[str, Path]:
    files = {}
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def imported(node: ast.AST, package: str, modules: set[str]) -> set[str]:
    """The project modules an import statement names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    names = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in modules:
            names.add(f"{base}.{alias.name}")
        elif base in modules:
            names.add(base)
    return names


def walk(nodes: list[ast.stmt]) -> list[ast.AST]:
    """Every node under `nodes`, except what `if TYPE_CHECKING:` guards."""
    found: list[ast.AST] = []
    stack: list[ast.AST] = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    modules = set(files)
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        graph[name] = set().union(*(imported(node, package, modules) for node in walk(tree.body))) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions_and_relative_ones() -> None:
    graph = import_graph()
    # moonborn_site.asgi imports the tier-1 worker inside `_start_tier1_worker`; runs.lifecycle imports its hub
    # as `from .hub import ...`.
    assert "chat.tier1" in graph["moonborn_site.asgi"]
    assert "runs.hub" in graph["runs.lifecycle"]
    assert len(graph) > 60


def test_no_module_of_the_project_takes_part_in_an_import_cycle() -> None:
    assert cycles(import_graph()) == []
