"""``lrs ingest``: raster scenes -> Zarr multiscale stores (+ STAC items)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrs_core.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from lrs_core.cli._common import console, fail, print_json


def _parse_bands(text: str | None) -> tuple[int, ...] | None:
    """Parse ``--bands 1,2,3`` into 1-based band numbers (exit 2 on bad syntax)."""
    if text is None:
        return None
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        fail(f"--bands {text!r} must be comma-separated band numbers, e.g. 1,2,3", code=EXIT_USAGE)
        raise AssertionError("unreachable") from None
    if len(bands) not in (1, 3) or any(b < 1 for b in bands):
        fail(f"--bands {text!r} must name 1 or 3 bands counted from 1", code=EXIT_USAGE)
    return bands


def ingest(
    sources: Annotated[list[Path], typer.Argument(help="Raster files or folders of rasters.")],
    out: Annotated[Path, typer.Option("--out", help="Folder of the <scene_id>.zarr stores.")],
    scene_id: Annotated[
        str | None, typer.Option("--id", help="Scene id (one source only); default: file stem.")
    ] = None,
    bands: Annotated[
        str | None, typer.Option("--bands", help="1-based bands mapped to R,G,B (or one: grey).")
    ] = None,
    dask_address: Annotated[
        str | None,
        typer.Option("--dask-address", help="tcp://HOST:PORT of a dask.distributed scheduler."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a store holding another source.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per scene.")] = False,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Queue behind another process writing the same store."),
    ] = False,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Also ingest the rasters in subfolders.")
    ] = False,
) -> None:
    """Ingest raster scenes into Zarr multiscale pyramids (resumable; reruns skip done scenes).

    Warnings (a scene without georeference, a footprint with no lon/lat form) and the folder
    entries left out are printed on standard error; --json records carry the warnings too.
    """
    import warnings

    from lrs_core.cli._common import progress_bar

    band_numbers = _parse_bands(bands)  # usage checks first: no raster library needed
    if out.exists() and not out.is_dir():
        fail(f"{out}: --out is an existing file, not a folder; pick a folder path", code=EXIT_USAGE)
    from lrs_core.errors import ConfigError, LrsWarning, OutputNotWritableError
    from lrs_core.raster.ingest import IngestConfig, ingest_many, prepare_out_dir, scan_sources

    try:
        config = IngestConfig(bands=band_numbers)
    except ConfigError as err:
        fail(str(err), code=EXIT_USAGE)
    scan = scan_sources(sources, recursive=recursive)
    for skipped, reason in scan.skipped:
        console.print(f"[yellow]skipped[/] {skipped}: {reason}", highlight=False)
    paths = list(scan.paths)
    if not paths:
        fail("no raster files found in the given sources", code=EXIT_USAGE)
    if scene_id is not None and len(paths) != 1:
        fail(f"--id {scene_id!r} needs exactly one source, got {len(paths)}", code=EXIT_USAGE)
    try:
        prepare_out_dir(out)
    except OutputNotWritableError as err:
        fail(str(err), code=EXIT_FAILED)
    with (
        progress_bar("ingest", enabled=not as_json) as update,
        warnings.catch_warnings(),
    ):
        # Each result carries the warnings of its scene; they are printed below, once.
        warnings.simplefilter("ignore", LrsWarning)
        try:
            results = ingest_many(
                paths,
                out,
                scene_id=scene_id,
                config=config,
                overwrite=overwrite,
                dask_address=dask_address,
                progress=update,
                on_scene=(lambda path: update.describe(f"ingest {path.name}"))
                if len(paths) > 1
                else None,
                wait=wait,
            )
        except OSError as err:
            if dask_address is None:
                raise
            fail(f"cannot use the dask scheduler at {dask_address}: {err}", code=EXIT_FAILED)
    for result in results:
        for message in result.warnings:
            console.print(f"[yellow]warning:[/] {message}", highlight=False)
    for result in results:
        if as_json:
            print_json(result.to_dict())
        elif result.status == "failed":
            console.print(f"[bold red]failed[/] {result.error}", highlight=False)
        else:
            shapes = " ".join(f"{h}x{w}" for h, w in result.level_shapes)
            console.print(
                f"[green]{result.status}[/] {result.source} -> {result.store} "
                f"(levels h x w: {shapes})",
                highlight=False,
            )
    raise typer.Exit(EXIT_FAILED if any(r.status == "failed" for r in results) else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add the ``ingest`` command to the ``lrs`` application."""
    app.command("ingest")(ingest)
