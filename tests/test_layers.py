"""The server package's structure: no import cycle, and the layers import downwards only
(api -> core -> index and backends; the domain types below them all; the CLI on top)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support import REPO

PACKAGE = REPO / "server" / "irgate"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["irgate", *path.relative_to(PACKAGE).with_suffix("").parts]
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = _module_names()


def _known(name: str) -> str | None:
    """The module of the package that an import of `name` loads (a name imported from a module is the module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import that runs, at module level or inside functions; `if TYPE_CHECKING:` blocks never run."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(_known(alias.name) for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([base] if base else [])])
        targets.update(_known(f"{base}.{alias.name}") for alias in node.names)
    return {target for target in targets if target and target != module}


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is None:
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
                        cycles.append(sorted(component))
            elif target not in index:
                index[target] = low[target] = len(index)
                stack.append(target)
                on_stack.add(target)
                work.append((target, iter(sorted(GRAPH[target]))))
            elif target in on_stack:
                low[node] = min(low[node], index[target])
    return cycles


def test_the_server_package_has_no_import_cycle() -> None:
    assert _cycles() == []


def test_the_check_sees_a_cycle() -> None:
    assert "irgate.cli.shared" in GRAPH["irgate.cli.commands"]  # relative to what the check reads
    GRAPH["irgate.cli.shared"].add("irgate.cli.commands")
    try:
        assert ["irgate.cli.commands", "irgate.cli.shared"] in _cycles()
    finally:
        GRAPH["irgate.cli.shared"].discard("irgate.cli.commands")


@pytest.mark.parametrize(("layer", "above"), [
    ("irgate.domain", ("irgate.api", "irgate.core", "irgate.index", "irgate.backends", "irgate.cli", "irgate.server")),
    ("irgate.index", ("irgate.api", "irgate.core", "irgate.cli", "irgate.server")),
    ("irgate.core", ("irgate.api", "irgate.cli", "irgate.server")),
    ("irgate.api", ("irgate.cli", "irgate.server")),
])
def test_a_layer_imports_nothing_above_it(layer: str, above: tuple[str, ...]) -> None:
    upward = sorted(f"{module} -> {target}" for module, targets in GRAPH.items() if module.startswith(layer)
                    for target in targets if target.startswith(above))
    assert upward == []


def _absolute_imports(tree: ast.AST) -> set[str]:
    """The top-level names of the absolute imports that run (`import a.b`, `from a.b import c`: "a")."""
    names = set()
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif not node.level and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_no_server_module_imports_a_benchmark() -> None:
    # benchmarks/ is no package: `irgate bench` alone loads its modules, by name, from a source checkout.
    benchmarks = {path.stem for path in (REPO / "benchmarks").glob("*.py")}
    assert {"judge", "naive_judge"} <= benchmarks
    assert _absolute_imports(ast.parse("def f():\n    from naive_judge import PAIRS")) & benchmarks  # the check sees one
    found = {module: sorted(_absolute_imports(ast.parse(path.read_text(), str(path))) & benchmarks)
             for module, path in MODULES.items()}
    assert {module: names for module, names in found.items() if names} == {}
