"""``lrs verify``: recompute a store's content digests and check its levels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrs_core.cli import EXIT_FAILED, EXIT_OK
from lrs_core.cli._common import console, print_json


def verify(
    stores: Annotated[list[Path], typer.Argument(help="<scene_id>.zarr stores to check.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON report per store.")] = False,
) -> None:
    """Check scene stores: per-level digests, each level the 2x reduction of the one below.

    Exit status 0 when every store passes, 1 when any fails or is not a store.
    """
    from lrs_core.errors import LrsError
    from lrs_core.raster.integrity import verify_store

    failed = False
    for store in stores:
        try:
            report = verify_store(store)
        except LrsError as err:
            failed = True
            if as_json:
                print_json({"store": str(store), "ok": False, "problems": [str(err)], "levels": []})
            else:
                console.print(f"[bold red]error:[/] {err}", highlight=False)
            continue
        failed = failed or not report.ok
        if as_json:
            print_json(report.to_dict())
        elif report.ok:
            console.print(
                f"[green]ok[/] {store} ({len(report.levels)} levels: digests match, each level "
                "is the 2x reduction of the one below)",
                highlight=False,
            )
        else:
            console.print(f"[bold red]FAILED[/] {store}", highlight=False)
            for problem in report.problems:
                console.print(f"  {problem}", highlight=False)
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add the ``verify`` command to the ``lrs`` application."""
    app.command("verify")(verify)
