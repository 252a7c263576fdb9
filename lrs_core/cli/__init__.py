"""The ``lrs`` command line.

Each module of this package owns one command group and exposes ``register(app)``; modules
are discovered here so command groups stay independent. Heavy imports (torch, transformers,
dask) happen inside the command functions so ``lrs --help`` stays fast.

Exit codes: 0 success, 1 one or more items failed, 2 usage error.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_app() -> typer.Typer:
    """Return the ``lrs`` Typer application with every command group registered."""
    app = typer.Typer(
        name="lrs",
        help=(
            "Answer questions about huge remote-sensing scenes with pruned vision-language models."
        ),
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(app)
    return app


def main() -> None:
    """Entry point of the ``lrs`` console script."""
    build_app()()
