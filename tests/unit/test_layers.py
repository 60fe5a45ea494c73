"""Dependencies point down (DESIGN "Dependencies point down"; docs/architecture.md "Layers").

Read from the source with ``ast``, every import counted, wherever it sits in a module
(function-level and ``TYPE_CHECKING`` imports too): a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pilotfactory"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``pilotfactory`` module this file imports (``from a import b`` counts ``a.b`` when
    ``a.b`` is a module, else ``a``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("pilotfactory"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("pilotfactory"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
    return out


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH: dict[str, set[str]] = {
    m: {i for i in _imports(p) if i in MODULES} for m, p in MODULES.items()
}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_is_read() -> None:
    """Guards the guard: the parser must see the imports it judges."""
    assert "pilotfactory.factory.ports" in GRAPH["pilotfactory.factory.plugin"]
    assert "pilotfactory.factory.contract" in GRAPH["pilotfactory.plugins.batchstatus.condor"]
    assert len(MODULES) > 40


@pytest.mark.parametrize(
    "package",
    ["pilotfactory.backends", "pilotfactory.plugins", "pilotfactory.sim", "pilotfactory.cli"],
)
def test_the_engine_imports_nothing_above_it(package: str) -> None:
    bad = sorted(
        f"{m} -> {i}"
        for m, deps in GRAPH.items()
        if _under(m, "pilotfactory.factory")
        for i in deps
        if _under(i, package)
    )
    assert bad == []


def test_the_engine_imports_only_the_engine() -> None:
    bad = sorted(
        f"{m} -> {i}"
        for m, deps in GRAPH.items()
        if _under(m, "pilotfactory.factory")
        for i in deps
        if not _under(i, "pilotfactory.factory") and i != "pilotfactory"
    )
    assert bad == []


def test_no_status_plugin_imports_a_submit_plugin() -> None:
    bad = sorted(
        f"{m} -> {i}"
        for m, deps in GRAPH.items()
        if _under(m, "pilotfactory.plugins.batchstatus")
        or _under(m, "pilotfactory.plugins.wmsstatus")
        for i in deps
        if _under(i, "pilotfactory.plugins.batchsubmit")
    )
    assert bad == []


def test_the_cloud_status_composes_the_vm_join_not_the_condor_plugin() -> None:
    """Direct-cloud VMs are judged by the shared join (vmjoin), never by disguising instances
    as job ads for the CondorEC2 plugin."""
    deps = GRAPH["pilotfactory.plugins.batchstatus.cloud"]
    assert "pilotfactory.plugins.batchstatus.vmjoin" in deps
    assert "pilotfactory.plugins.batchstatus.condor" not in deps


def test_backends_import_no_plugin_and_no_simulator() -> None:
    bad = sorted(
        f"{m} -> {i}"
        for m, deps in GRAPH.items()
        if _under(m, "pilotfactory.backends")
        for i in deps
        if _under(i, "pilotfactory.plugins") or _under(i, "pilotfactory.sim")
    )
    assert bad == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    graph = {m: {i for i in deps if i != "pilotfactory"} for m, deps in GRAPH.items()}
    assert _cycles(graph) == []
