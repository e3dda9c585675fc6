"""The import rules of docs/architecture.md, read off the source (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.flower_harness import REPO

MATH_PACKAGES = ("align", "distill", "diffusion", "quant", "baselines")
# What the math packages must never import: configuration, results, the method registry
# and the layers above (docs/architecture.md).
FORBIDDEN_FOR_MATH = (
    "fedmatch.config",
    "fedmatch.params",
    "fedmatch.methods",
    "fedmatch.factories",
    "fedmatch.results",
    "strategies",
    "clients",
)
LAYERS = ("fedmatch", "strategies", "clients")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in LAYERS}


def _sources() -> dict[str, Path]:
    files = [p for layer in LAYERS for p in (REPO / layer).rglob("*.py")]
    return {_module_name(p): p for p in files}


def test_math_packages_import_no_configuration_results_or_upper_layers():
    offending = []
    for name, path in _sources().items():
        if name.split(".")[:2] not in [["fedmatch", pkg] for pkg in MATH_PACKAGES]:
            continue
        for imported in _imports(path, top_level_only=False):  # lazy imports count too
            if imported.startswith(FORBIDDEN_FOR_MATH):
                offending.append(f"{name} imports {imported}")
    assert offending == []


def test_fedmatch_never_imports_strategies_or_clients():
    offending = [
        f"{name} imports {imported}"
        for name, path in _sources().items()
        if name.startswith("fedmatch")
        for imported in _imports(path, top_level_only=False)
        if imported.startswith(("strategies", "clients"))
    ]
    assert offending == []


def test_no_import_cycles_between_modules():
    sources = _sources()
    graph = {
        name: {
            target
            for imported in _imports(path, top_level_only=True)
            for target in (imported, imported.rsplit(".", 1)[0])
            if target in sources and target != name
        }
        for name, path in sources.items()
    }
    # A package's __init__ re-exporting its own submodules is not a cycle of layers.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(f"{t}.")}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle.extend([*stack, node, target])
                return True
            if target not in state and visit(target, [*stack, node]):
                return True
        state[node] = 2
        return False

    for node in sorted(graph):
        if node not in state and visit(node, []):
            break
    assert cycle == [], " -> ".join(cycle)
