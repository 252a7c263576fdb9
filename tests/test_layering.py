"""The layering contract: import-linter's contracts, no module cycle, no Prefect at run time.

The contracts live in pyproject.toml (``[tool.importlinter]``, explained in docs/architecture.md);
import-linter reads every import statement, inside functions and under TYPE_CHECKING too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]

#: Module cycles that another branch of issue 12 removes (focus.plan and focus.record import back
#: from focus.engine). Empty it when that lands: the test fails while a listed cycle is gone.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def test_import_linter_contracts_are_kept() -> None:
    code = (
        "import sys\n"
        "from importlinter.cli import lint_imports_command\n"
        "sys.argv = ['lint-imports', '--no-cache']\n"
        "lint_imports_command()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def _strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's strongly connected components with more than one module (the cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules_of_lrs_core() -> None:
    graph = grimp.build_graph("lrs_core", cache_dir=None)
    edges = {
        module: {m for m in graph.find_modules_directly_imported_by(module) if m in graph.modules}
        for module in graph.modules
    }
    cycles = set(_strongly_connected(edges))
    assert cycles - KNOWN_CYCLES == set(), sorted(sorted(c) for c in cycles - KNOWN_CYCLES)
    assert KNOWN_CYCLES <= cycles, "a known cycle is gone: remove it from KNOWN_CYCLES"


def test_a_cycle_is_found() -> None:
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        frozenset({"a", "b", "c"})
    ]


def test_lrs_core_does_not_import_prefect() -> None:
    code = (
        "import sys, pkgutil, importlib, lrs_core\n"
        "for m in pkgutil.walk_packages(lrs_core.__path__, 'lrs_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "roots = ('prefect', 'flows', 'tasks')\n"
        "leaked = sorted(k for k in sys.modules if k.split('.')[0] in roots)\n"
        "assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
