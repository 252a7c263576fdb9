"""pyproject.toml declares what the code imports, and imports what it declares.

The library's third-party imports (every import statement, inside functions too) must be core
dependencies, and every core dependency must be imported by the library; flows/ and tasks/ may add
the ``orchestration`` extra; the ``test`` extra pulls ``orchestration`` in.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Mapping
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
#: Top-level packages of this repository (never third-party).
OWN = frozenset({"lrs_core", "flows", "tasks"})


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def _imported_roots(package: str) -> dict[str, set[str]]:
    """Top-level module name -> files of ``package`` that import it (absolute imports only)."""
    roots: dict[str, set[str]] = {}
    for file in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                roots.setdefault(module.split(".")[0], set()).add(str(file.relative_to(REPO)))
    return {
        root: files
        for root, files in roots.items()
        if root not in sys.stdlib_module_names and root not in OWN and root != "__future__"
    }


@cache
def _installed() -> Mapping[str, list[str]]:
    """Importable top-level name -> the installed distributions providing it (slow: once)."""
    return packages_distributions()


def _distributions(root: str) -> set[str]:
    return {canonicalize_name(name) for name in _installed().get(root, [])}


CORE = _names(PROJECT["dependencies"])
EXTRAS = {name: _names(reqs) for name, reqs in PROJECT["optional-dependencies"].items()}


def _undeclared(package: str, allowed: set[str]) -> dict[str, list[str]]:
    return {
        root: sorted(files)
        for root, files in _imported_roots(package).items()
        if not _distributions(root) & allowed
    }


def test_every_library_import_is_a_core_dependency() -> None:
    assert _undeclared("lrs_core", CORE) == {}


def test_every_core_dependency_is_imported_by_the_library() -> None:
    imported: set[str] = set()
    for root in _imported_roots("lrs_core"):
        imported |= _distributions(root)
    assert CORE - imported == set()


def test_orchestration_imports_are_core_or_orchestration() -> None:
    allowed = CORE | EXTRAS["orchestration"]
    assert _undeclared("flows", allowed) == {}
    assert _undeclared("tasks", allowed) == {}


def test_prefect_and_its_pins_are_an_extra_that_the_test_extra_pulls() -> None:
    assert {"prefect", "fastapi", "sqlalchemy"} <= EXTRAS["orchestration"]
    assert "prefect" not in CORE and "sqlalchemy" not in CORE
    assert "lrs" in EXTRAS["test"]
    assert EXTRAS["gpu"] == {"flash-attn"}


def test_an_undeclared_import_is_caught() -> None:
    missing = _undeclared("lrs_core", CORE - {"zarr"})
    assert set(missing) == {"zarr"}
    assert "lrs_core/raster/ingest.py" in missing["zarr"]
