"""``lrs ask``: answer questions about an ingested scene (or plan what they would cost)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lrs_core.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from lrs_core.cli._common import (
    MODEL_HELP,
    BudgetOpt,
    DeviceOpt,
    DtypeOpt,
    PresetOpt,
    check_runtime,
    console,
    fail,
    print_json,
)

if TYPE_CHECKING:
    from lrs_core.records import AnswerRecord


def record_json(record: AnswerRecord) -> dict[str, Any]:
    """Return one ``--json`` line: the record once, plus the footprints of its evidence tiles.

    The line is ``record.to_dict()`` (so :meth:`AnswerRecord.from_dict` reads it back) with one
    more key, ``footprints``: one object per final evidence tile, ``{dip_level, tile_rc,
    bbox_px: [x0, y0, x1, y1] (level-0 pixel corners), score, lonlat, scene_crs}``, where
    ``lonlat`` is a GeoJSON Polygon in EPSG:4326 (RFC 7946 winding, edges densified) and
    ``scene_crs`` the same tile in the scene CRS (``record.scene.crs_wkt``); both are null for a
    scene without georeference.
    """
    from shapely import orient_polygons
    from shapely.geometry import mapping

    from lrs_core.outputs.geometry import record_geometries

    data = record.to_dict()
    data["footprints"] = [
        {
            "dip_level": row.dip_level,
            "tile_rc": list(row.index_rc),
            "bbox_px": list(row.bbox_px),
            "score": row.score,
            "lonlat": None
            if row.geometry_lonlat is None
            else dict(mapping(orient_polygons(row.geometry_lonlat, exterior_cw=False))),
            "scene_crs": None if row.geometry_crs is None else dict(mapping(row.geometry_crs)),
        }
        for row in record_geometries(record, top_tokens=0)
    ]
    return data


def _summary(record: AnswerRecord) -> str:
    acc = record.accounting
    kind = "planned (upper bound for default/parity)" if acc.planned else "measured"
    timing = "" if acc.planned else f", {acc.seconds.get('total', 0.0):.2f} s"
    return (
        f"{kind}: tiles {acc.vision_tiles_encoded} (+{acc.vision_tiles_cached} cached), "
        f"vision tokens {acc.vision_tokens_to_llm}, prefill {acc.llm_prefill_tokens}, "
        f"{acc.flops.total_flops / 1e12:.3f} TFLOPs{timing}"
    )


def ask(
    scene: Annotated[Path, typer.Option("--scene", help="Scene store (<scene_id>.zarr).")],
    model: Annotated[Path, typer.Option("--model", help=MODEL_HELP)],
    question: Annotated[str | None, typer.Option("--question", help="One question.")] = None,
    questions: Annotated[
        Path | None, typer.Option("--questions", help="JSONL / CSV / text file of questions.")
    ] = None,
    preset: PresetOpt = "default",
    budget: BudgetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", help="Most generated tokens.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count tiles, tokens and FLOPs; run no model.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per question.")] = False,
    geojson: Annotated[
        Path | None,
        typer.Option(
            "--geojson", help="Also write the answers and evidence footprints (EPSG:4326) here."
        ),
    ] = None,
) -> None:
    """Answer questions about a scene with a coarse-to-fine pruned vision-language model.

    With --dry-run, count what each question would cost (tiles, tokens, FLOPs) without running
    the model: the weights are not read.
    """
    from lrs_core.cli._common import check_budget, check_question, progress_bar, reported_errors
    from lrs_core.focus.config import FocusConfig

    # Usage checks come first and need no heavy library (torch, transformers, zarr).
    if (question is None) == (questions is None):
        fail("give exactly one of --question TEXT or --questions FILE", code=EXIT_USAGE)
    check_question(question)
    check_budget(budget)
    check_runtime(device, dtype)
    overrides: dict[str, Any] = {}
    if max_new_tokens is not None:
        overrides["max_new_tokens"] = max_new_tokens
    with reported_errors(config_is_usage=True):
        FocusConfig.from_preset(preset, **overrides)
    from lrs_core.batch.ask import Question, load_engine, read_questions_file
    from lrs_core.errors import LrsError
    from lrs_core.raster.pyramid import open_pyramid

    with reported_errors(config_is_usage=True):
        items = (
            [Question(question_id="q1", text=question.strip())]
            if question is not None
            else read_questions_file(questions)  # type: ignore[arg-type]  # checked above
        )
        engine = load_engine(
            model,
            preset=preset,
            budget=budget,
            device=device,
            dtype=dtype,
            overrides=overrides,
            weights=not dry_run,
        )
        pyramid = open_pyramid(scene)
    if dry_run:
        records = []
        for item in items:
            try:
                records.append(engine.plan(pyramid, item.text, question_id=item.question_id))
            except LrsError as err:
                fail(f"{item.question_id}: {err}", code=EXIT_FAILED)
    else:
        with progress_bar(
            "ask", enabled=not as_json and len(items) > 1, total=len(items)
        ) as update:
            records = engine.answer_many(
                pyramid, [(q.question_id, q.text) for q in items], progress=update
            )
    if geojson is not None:
        from lrs_core.outputs.geojson import write_geojson

        with reported_errors():
            write_geojson(records, geojson)
    for record in records:
        if as_json:
            print_json(record_json(record))
        elif record.error is not None:
            console.print(
                f"[bold red]failed[/] {record.question_id}: {record.error}", highlight=False
            )
        else:
            typer.echo(record.answer if not dry_run else f"[dry run] {record.question_id}")
            console.print(_summary(record), highlight=False)
    raise typer.Exit(EXIT_FAILED if any(r.error is not None for r in records) else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add the ``ask`` command to the ``lrs`` application."""
    app.command("ask")(ask)
