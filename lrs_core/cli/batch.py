"""``lrs batch``: answer a file of (scene, question) requests into GeoParquet, GeoJSON and overlays.

The command is :func:`lrs_core.batch.run.run_batch` with a progress bar: no Prefect, no server. A
rerun into the same ``--out`` answers only the questions it does not hold yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrs_core.cli import EXIT_FAILED, EXIT_OK
from lrs_core.cli._common import BudgetOpt, DeviceOpt, DtypeOpt, PresetOpt

#: Environment variable giving ``--data-root`` when the option is not given.
DATA_ROOT_ENV = "LRS_DATA_ROOT"


def batch(
    requests: Annotated[
        Path,
        typer.Argument(
            help="CSV (with a header), JSONL or Parquet file of scene,question[,id] rows. The "
            "scene is a store path, a scene id in --stores, or a raster file (ingested first).",
            show_default=False,
        ),
    ],
    model: Annotated[str, typer.Option("--model", help="Model directory (or model name).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output folder: answers.parquet/ (GeoParquet parts), answers.geojson, "
            "overlays/. A rerun adds only the missing answers.",
        ),
    ],
    stores: Annotated[
        Path,
        typer.Option("--stores", help="Folder of scene stores; rasters are ingested into it."),
    ] = Path("stores"),
    preset: PresetOpt = "default",
    budget: BudgetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data-root",
            envvar=DATA_ROOT_ENV,
            help="Only read scenes under this folder (or --stores); relative scene paths are "
            "read from it.",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait for another run writing --out instead of failing."),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON document: counts, output paths, rows."),
    ] = False,
) -> None:
    """Answer many questions about many scenes; resumable, no Prefect needed."""
    from lrs_core.cli._common import (
        check_budget,
        check_out_path,
        check_runtime,
        console,
        print_json,
        progress_bar,
        reported_errors,
    )

    check_budget(budget)
    check_runtime(device, dtype)
    check_out_path(out, kind="folder")
    from lrs_core.batch.run import BatchSettings, run_batch
    from lrs_core.outputs.parts import GEOJSON_NAME, OVERLAYS_DIRNAME, PARTS_DIRNAME

    settings = BatchSettings(
        model=model,
        out=str(out),
        stores=str(stores),
        preset=preset,
        budget=budget,
        device=device,
        dtype=dtype,
        data_root=None if data_root is None else str(data_root),
        wait=wait,
    )
    with reported_errors(config_is_usage=True), progress_bar("batch", enabled=not as_json) as bar:
        result = run_batch(requests, settings, progress=bar)
    counts = result.counts
    if as_json:
        print_json(
            {
                "out_dir": str(out),
                "answers_parquet": str(out / PARTS_DIRNAME),
                "answers_geojson": str(out / GEOJSON_NAME),
                "overlays_dir": str(out / OVERLAYS_DIRNAME),
                "counts": counts.to_dict(),
                "summary": result.summary(),
                "rows": list(result.rows),
            }
        )
    else:
        for row in result.rows:
            if row["status"] == "failed":
                console.print(
                    f"[bold red]failed[/] {row['question_id']}: {row['error']}",
                    highlight=False,
                    soft_wrap=True,
                )
        console.print(
            ("[bold red]error:[/] " if counts.failed else "") + result.summary(),
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(EXIT_FAILED if counts.failed else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add the ``batch`` command to the ``lrs`` application."""
    app.command("batch")(batch)
