"""``lrs demo``: the whole path (scene → ingest → answers → outputs) on this machine, no Prefect."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from lrs_core.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from lrs_core.cli._common import (
    BudgetOpt,
    DeviceOpt,
    DtypeOpt,
    PresetOpt,
    check_budget,
    check_out_path,
    check_runtime,
    console,
    fail,
    print_json,
    progress_bar,
    reported_errors,
)

#: Characters of each answer the terminal shows (a model's answer may be long or odd bytes).
ANSWER_PREVIEW_CHARS = 40


def answer_preview(answer: str, *, max_chars: int = ANSWER_PREVIEW_CHARS) -> str:
    """The answer as an escaped ``repr`` of its first ``max_chars`` characters (``...`` if cut)."""
    shown = repr(answer[:max_chars]).encode("ascii", "backslashreplace").decode("ascii")
    return shown + ("..." if len(answer) > max_chars else "")


def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Output folder (answers, overlays, scene, model).")
    ] = Path("demo-output"),
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document describing the outputs.")
    ] = False,
    preset: PresetOpt = "default",
    budget: BudgetOpt = None,
    scene_size: Annotated[
        str, typer.Option("--scene-size", help="Demo scene WIDTHxHEIGHT in pixels.")
    ] = "3000x2000",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Run the demo: a miniature-world scene, ingested and answered by the trained world model."""
    check_budget(budget)
    check_out_path(out, kind="folder")
    check_runtime(device, dtype)
    try:
        width, height = (int(v) for v in scene_size.lower().split("x"))
    except ValueError:
        fail(f"--scene-size {scene_size!r} is not WIDTHxHEIGHT (e.g. 3000x2000)", code=EXIT_USAGE)
    from lrs_core.demo import STORES_DIRNAME, run_demo

    with reported_errors(), progress_bar("demo", enabled=not as_json) as bar:
        result = run_demo(
            out,
            size_wh=(width, height),
            preset=preset,
            budget=budget,
            device=device,
            dtype=dtype,
            progress=bar,
        )
    if as_json:
        print_json(
            {
                "out_dir": str(result.out_dir),
                "answers_parquet": str(result.answers_parquet),
                "answers_geojson": str(result.answers_geojson),
                "overlays": [str(p) for p in result.overlays],
                "model_dir": str(result.model_dir),
                "scene": str(result.scene.scene_path),
                "rows": list(result.rows),
                "checks": [asdict(c) for c in result.checks()],
            }
        )
    else:
        checks = {c.question_id: c for c in result.checks()}
        for row in result.rows:
            status = {"answered": "[green]answered[/]", "skipped": "[dim]already answered[/]"}.get(
                row["status"], "[bold red]failed[/]"
            )
            console.print(
                f"{status} {row['question_id']}: {' '.join(str(row['question']).split())}",
                highlight=False,
                soft_wrap=True,
            )
            if row["status"] == "failed":
                console.print(f"    error: {row['error']}", highlight=False, soft_wrap=True)
            elif row["question_id"] in checks:
                check = checks[row["question_id"]]
                verdict = "[green]right[/]" if check.correct else "[bold red]wrong[/]"
                covered = (
                    ""
                    if check.evidence_coverage is None
                    else f"; evidence covers {check.evidence_coverage:.0%} of the object"
                )
                console.print(
                    f"    answer: {answer_preview(check.answer)} {verdict} (truth: "
                    f"{check.ground_truth}{covered})",
                    highlight=False,
                    soft_wrap=True,
                )
        console.print(
            "\n".join(
                [
                    "",
                    f"Outputs in {result.out_dir}:",
                    f"  {result.answers_parquet}  (GeoParquet parts: QGIS, DuckDB, geopandas)",
                    f"  {result.answers_geojson}  (evidence footprints, EPSG:4326)",
                    f"  {result.out_dir / 'overlays'}/  ({len(result.overlays)} PNG overlays)",
                    "",
                    "See them on a map:",
                    f"  lrs serve --stores {result.out_dir / STORES_DIRNAME} --answers "
                    f"{result.out_dir}",
                    "The same demo through the Prefect flows (runs, artifacts in the Prefect UI):",
                    f"  python -m flows.demo {result.out_dir}",
                ]
            ),
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(EXIT_FAILED if result.n_failed else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to the ``lrs`` application."""
    app.command("demo")(demo)
