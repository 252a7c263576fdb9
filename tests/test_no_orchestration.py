"""No module of ``lrs_core`` imports Prefect, ``flows`` or ``tasks``, at any depth.

``tests/test_layering.py`` imports every module and looks at ``sys.modules``, which misses
imports inside functions (they run only when called). This test reads every import statement of
every ``lrs_core`` module, inside functions and ``TYPE_CHECKING`` blocks included. The runtime
proof that ``lrs batch`` works with Prefect unimportable is in ``tests/lrs_core/cli/test_batch.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lrs_core

ORCHESTRATION = frozenset({"prefect", "flows", "tasks"})


def orchestration_imports(source: str) -> list[tuple[int, str]]:
    """Return ``(line, module)`` of every import of an orchestration package in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.stmt | ast.expr):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        found += [(node.lineno, n) for n in names if n.split(".")[0] in ORCHESTRATION]
    return found


def test_the_scan_finds_imports_inside_functions() -> None:
    code = "def f():\n    from flows.demo import run_demo\n    import importlib\n"
    code += "    importlib.import_module('prefect.states')\n"
    assert orchestration_imports(code) == [(2, "flows.demo"), (4, "prefect.states")]


def test_lrs_core_never_imports_orchestration() -> None:
    root = Path(lrs_core.__file__).parent
    leaks = {
        str(path.relative_to(root.parent)): hits
        for path in sorted(root.rglob("*.py"))
        if (hits := orchestration_imports(path.read_text(encoding="utf-8")))
    }
    assert leaks == {}
