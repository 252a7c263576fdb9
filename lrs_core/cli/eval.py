"""``lrs eval``: run and score benchmarks, merge chunks, build the synthetic set, focus metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from lrs_core.cli._common import (
    LEGACY_POSITIONAL,
    MODEL_HELP,
    BudgetOpt,
    DeviceOpt,
    DtypeOpt,
    PresetOpt,
    check_runtime,
)

eval_app = typer.Typer(
    name="eval",
    help="Benchmarks: score LRS-VQA / MME-RealWorld-RS predictions, synthetic set, focus metrics.",
    no_args_is_help=True,
)


@eval_app.command("score")
def score_command(
    predictions: Annotated[
        list[Path], typer.Argument(help="LRS-VQA prediction JSONL file(s), merged.")
    ],
    mme: Annotated[
        Path | None, typer.Option("--mme", help="MME-RealWorld-RS prediction file.")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the scores as one JSON line.")
    ] = False,
) -> None:
    """Score LRS-VQA predictions as the benchmark's own scorer does; accuracies in percent.

    An answer counts when it matches the ground truth after the scorer's normalisation
    (numbers, yes/no, WordNet synonyms); prints overall (OA) and average (AA) accuracy per
    dataset and category.
    """
    from rich.table import Table

    from lrs_core.cli._common import console, print_json, reported_errors
    from lrs_core.evaluation.mme import score_file
    from lrs_core.evaluation.scoring import read_prediction_rows, score_rows
    from lrs_core.evaluation.wordnet import WordNetMatcher

    with reported_errors():
        rows = read_prediction_rows(predictions)  # read (and fail) before loading WordNet
        mme_score = None if mme is None else score_file(mme)
        result = score_rows(rows, matcher=WordNetMatcher(), mme=mme_score)
    report = result.to_json()
    if json_output:
        print_json(report)
        return
    table = Table(title="LRS-VQA (accuracy, %)")
    for column in ("dataset", "category", "correct / counted", "accuracy"):
        table.add_column(column, justify="left" if column in ("dataset", "category") else "right")
    for name, group in result.groups.items():
        summary = report["datasets"][name]
        for category, count in group.categories.items():
            table.add_row(
                name,
                category,
                f"{count.correct} / {count.total}",
                f"{summary['categories'][category]:.2f}",
            )
        table.add_row(
            name,
            "[bold]OA[/]",
            f"{group.n_correct} / {group.n_total}",
            f"[bold]{summary['overall_accuracy']:.2f}[/]",
        )
        table.add_row(
            name,
            "[bold]AA[/]",
            f"skipped {group.n_skipped}",
            f"[bold]{summary['average_accuracy']:.2f}[/]",
            end_section=True,
        )
    console.print(table)
    if report["lrs_vqa_mean"] is not None:
        console.print(f"LRS-VQA mean of the datasets' AA: {report['lrs_vqa_mean']:.2f}")
    if "mme_realworld_rs" in report:
        console.print(f"MME-RealWorld-RS accuracy: {report['mme_realworld_rs']:.2f}")
        four = report["four_benchmark_mean"]
        console.print(
            "four-benchmark mean: "
            + ("n/a (needs FAIR, GLH-Bridge and STAR)" if four is None else f"{four:.2f}")
        )
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")


@eval_app.command("synth", context_settings=LEGACY_POSITIONAL)
def synth_command(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Data root to create (LRS_VQA/image/ + question file)."),
    ] = None,
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
    scenes: int = typer.Option(
        3, "--scenes", help="Number of scenes (the last one is the large one)."
    ),
    large_side: int = typer.Option(
        10_880, "--large-side", help="Long side in px of the largest scene (> 10000 for the issue)."
    ),
    side: int = typer.Option(3_000, "--side", help="Long side in px of the other scenes."),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Deprecated: use 'lrs world make'. Write the older planted-object benchmark."""
    from lrs_core.cli._common import (
        console,
        deprecated_positional,
        out_path,
        print_json,
        progress_bar,
        reported_errors,
    )

    out_dir = out_path(out, deprecated_positional(ctx), name="OUT_DIR")
    assert out_dir is not None  # required
    console.print(
        "[yellow]note:[/] 'lrs eval synth' is deprecated; 'lrs world make' writes scenes with DOTA "
        "annotations and questions a trained model ('--model world') understands"
    )
    from lrs_core.evaluation.synth import SynthConfig, write_synthetic_set

    with reported_errors():
        # Objects shrink with small scenes so any side of a few hundred px still works.
        shortest = min(side * 2 // 3, large_side // 2)
        max_object = max(SynthConfig.min_object_px, min(SynthConfig.max_object_px, shortest // 4))
        config = SynthConfig(
            seed=seed,
            n_scenes=scenes,
            large_side_px=large_side,
            side_px=side,
            max_object_px=max_object,
        )
        with progress_bar("writing scenes", enabled=not json_output, total=scenes) as progress:
            result = write_synthetic_set(out_dir, config=config, progress=progress)
    summary = {
        "data_root": str(result.data_root),
        "question_file": str(result.question_file),
        "scenes": [
            {"image": s.image, "size_wh": list(s.size_wh), "objects": len(s.objects)}
            for s in result.scenes
        ],
        "questions": result.n_questions,
    }
    if json_output:
        print_json(summary)
        return
    console.print(
        f"{result.n_questions} questions about {len(result.scenes)} scenes in "
        f"{result.question_file}",
        highlight=False,
    )
    for scene in result.scenes:
        console.print(
            f"  {scene.image}: {scene.size_wh[0]} x {scene.size_wh[1]} px, "
            f"{len(scene.objects)} objects",
            highlight=False,
        )


@eval_app.command("focus")
def focus_command(
    predictions: Annotated[Path, typer.Argument(help="Prediction JSONL with answer records.")],
    data: Annotated[Path, typer.Option("--data", help="Data root holding the question file.")],
    questions: Annotated[
        Path | None,
        typer.Option("--questions", help="Question file (default DATA/LRS_VQA_merged.jsonl)."),
    ] = None,
    json_output: bool = typer.Option(False, "--json", help="Print the metrics as one JSON line."),
) -> None:
    """Report how well the final evidence covers each question's box, per category/size/dataset."""
    from rich.table import Table

    from lrs_core.cli._common import console, print_json, reported_errors
    from lrs_core.evaluation.focus_metrics import focus_report_files
    from lrs_core.evaluation.lrs_vqa import QUESTION_FILE_NAME

    question_file = questions if questions is not None else data / QUESTION_FILE_NAME
    with reported_errors():
        report = focus_report_files(predictions, question_file=question_file)
    payload = report.to_json()
    if json_output:
        print_json(payload)
        return
    for axis in ("dataset", "category", "size_bin"):
        table = Table(title=f"focus by {axis}")
        for column in (axis, "questions", "box coverage", "top token in box", "tiles visited"):
            table.add_column(column, justify="left" if column == axis else "right")
        for key, summary in payload[f"by_{axis}"].items():
            hit = summary["top_token_in_box_rate"]
            table.add_row(
                key,
                str(summary["n_questions"]),
                f"{summary['mean_box_coverage']:.3f}",
                "n/a" if hit is None else f"{hit:.3f}",
                f"{summary['mean_tiles_visited']:.1f}",
            )
        console.print(table)
    console.print(
        f"{payload['n_questions']} questions with a box scored; {payload['n_without_record']} "
        "predictions had no answer record",
        highlight=False,
    )


run_app = typer.Typer(
    name="run",
    help="Answer a benchmark with the engine: one JSON line per question, resumable, chunked.",
    no_args_is_help=True,
)

_DATA_HELP = "Data root (holds the question file and the images it names)."
_QUESTIONS_HELP = "Question file (default: the benchmark's file inside --data)."


def _run_benchmark(
    benchmark: str,
    *,
    data: Path,
    questions: Path | None,
    model: Path,
    preset: str,
    out: Path,
    stores: Path | None,
    limit: int | None,
    num_chunks: int,
    chunk_idx: int,
    budget: int | None,
    device: str,
    dtype: str,
    max_new_tokens: int | None,
    ingest_only: bool,
    json_output: bool,
    wait: bool = False,
) -> None:
    """Shared body of ``lrs eval run lrs-vqa`` and ``lrs eval run mme``."""
    from lrs_core.cli import EXIT_FAILED, EXIT_OK
    from lrs_core.cli._common import (
        check_budget,
        check_out_path,
        console,
        print_json,
        progress_bar,
        reported_errors,
    )
    from lrs_core.focus.config import FocusConfig

    # Usage checks first: none needs torch, transformers or a raster library.
    check_runtime(device, dtype)
    overrides = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    check_budget(budget)
    with reported_errors(config_is_usage=True):
        FocusConfig.from_preset(preset, **overrides)
    from lrs_core.evaluation import runner

    store_dir = stores if stores is not None else runner.default_store_dir(out)
    if not ingest_only:
        check_out_path(out, kind="file")
    check_out_path(store_dir, kind="folder", option="--stores" if stores else "--out", create=False)
    with reported_errors(config_is_usage=True):
        if ingest_only:
            _, _, images = runner.benchmark_images(
                benchmark,  # type: ignore[arg-type]  # one of runner.BENCHMARKS by construction
                questions if questions is not None else data,
                data_root=data,
                limit=limit,
                num_chunks=num_chunks,
            )
            with progress_bar("ingest", enabled=not json_output, total=len(images)) as update:
                results = runner.ingest_benchmark_scenes(
                    images, store_dir=store_dir, progress=update
                )
            failed = [r for r in results if r.status == "failed"]
            if json_output:
                print_json({"store_dir": str(store_dir), "scenes": [r.to_dict() for r in results]})
            else:
                console.print(
                    f"{len(results) - len(failed)} scenes ready in {store_dir}, "
                    f"{len(failed)} failed",
                    highlight=False,
                )
                for result in failed:
                    console.print(
                        f"[red]failed[/] {result.source}: {result.error}", highlight=False
                    )
            raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)
        with progress_bar(f"eval {benchmark}", enabled=not json_output) as update:
            summary = runner.run_benchmark(
                benchmark,  # type: ignore[arg-type]  # one of runner.BENCHMARKS by construction
                questions if questions is not None else data,
                data_root=data,
                model_dir=model,
                preset=preset,
                out=out,
                store_dir=store_dir,
                limit=limit,
                num_chunks=num_chunks,
                chunk_idx=chunk_idx,
                budget=budget,
                device=device,
                dtype=dtype,
                overrides=overrides,
                progress=update,
                wait=wait,
            )
    if json_output:
        print_json(summary.to_dict())
    else:
        console.print(
            f"{summary.n_answered} answered, {summary.n_failed} failed, "
            f"{summary.n_already_done} already done of {summary.n_selected} questions "
            f"(chunk {summary.chunk_idx + 1}/{summary.num_chunks}) in {summary.seconds:.1f} s "
            f"-> {summary.out}",
            highlight=False,
        )
        for failure in summary.failures:
            console.print(
                f"[red]failed[/] {failure.question_id} ({failure.image}): {failure.error}",
                highlight=False,
            )
    raise typer.Exit(EXIT_FAILED if summary.n_failed else EXIT_OK)


# Options shared by ``lrs eval run lrs-vqa`` and ``lrs eval run mme`` (module-level aliases, as the
# annotations are strings evaluated in this module's globals).
DataOpt = Annotated[Path, typer.Option("--data", help=_DATA_HELP)]
ModelOpt = Annotated[Path, typer.Option("--model", help=MODEL_HELP)]
OutOpt = Annotated[
    Path, typer.Option("--out", help="Prediction JSONL (appended to; a rerun resumes).")
]
QuestionsOpt = Annotated[Path | None, typer.Option("--questions", help=_QUESTIONS_HELP)]
StoresOpt = Annotated[
    Path | None,
    typer.Option("--stores", help="Folder of scene stores (default: the --out path + .stores)."),
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="First N questions of the chunk.")]
NumChunksOpt = Annotated[int, typer.Option("--num-chunks", help="Split the questions into K.")]
ChunkIdxOpt = Annotated[int, typer.Option("--chunk-idx", help="The chunk to answer (0-based).")]
MaxNewTokensOpt = Annotated[
    int | None, typer.Option("--max-new-tokens", help="Most generated tokens.")
]
IngestOnlyOpt = Annotated[
    bool,
    typer.Option(
        "--ingest-only", help="Only ingest the images of all chunks (before parallel runs)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the run summary as one JSON line.")]
WaitOpt = Annotated[
    bool,
    typer.Option("--wait", help="If another run writes --out, queue behind it instead of failing."),
]


def _benchmark_command(benchmark: str, doc: str) -> Callable[..., None]:
    """Build the ``lrs eval run <benchmark>`` command (same options for every benchmark)."""

    def command(
        data: DataOpt,
        model: ModelOpt,
        out: OutOpt,
        preset: PresetOpt = "default",
        questions: QuestionsOpt = None,
        stores: StoresOpt = None,
        limit: LimitOpt = None,
        num_chunks: NumChunksOpt = 1,
        chunk_idx: ChunkIdxOpt = 0,
        budget: BudgetOpt = None,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = "auto",
        max_new_tokens: MaxNewTokensOpt = None,
        ingest_only: IngestOnlyOpt = False,
        json_output: JsonOpt = False,
        wait: WaitOpt = False,
    ) -> None:
        _run_benchmark(
            benchmark,
            data=data,
            questions=questions,
            model=model,
            preset=preset,
            out=out,
            stores=stores,
            limit=limit,
            num_chunks=num_chunks,
            chunk_idx=chunk_idx,
            budget=budget,
            device=device,
            dtype=dtype,
            max_new_tokens=max_new_tokens,
            ingest_only=ingest_only,
            json_output=json_output,
            wait=wait,
        )

    command.__doc__ = doc
    command.__name__ = f"run_{benchmark.replace('-', '_')}_command"
    return command


run_lrs_vqa_command = run_app.command("lrs-vqa")(
    _benchmark_command(
        "lrs-vqa",
        "Answer LRS-VQA (default --questions DATA/LRS_VQA_merged.jsonl); exit 1 if any failed.",
    )
)
run_mme_command = run_app.command("mme")(
    _benchmark_command(
        "mme", "Answer MME-RealWorld-RS (default --questions DATA/MME_RealWorld_RS.json)."
    )
)


eval_app.add_typer(run_app)


@eval_app.command("merge")
def merge_command(
    predictions: Annotated[list[Path], typer.Argument(help="Chunk / rerun prediction files.")],
    out_option: Annotated[
        Path | None, typer.Option("--out", help="Merged prediction file to write.")
    ] = None,
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Merge chunk files: one line per question id; conflicting answers are an error.

    The older form 'lrs eval merge OUT FILES...' (the output first, no --out) still works and
    is deprecated.
    """
    from lrs_core.cli._common import (
        check_out_path,
        console,
        fail,
        out_path,
        print_json,
        reported_errors,
    )

    positional = None
    if out_option is None:
        if len(predictions) < 2:
            fail("missing option '--out': give the merged file, e.g. --out pred.jsonl", code=2)
        positional, predictions = predictions[0], predictions[1:]
    out = out_path(out_option, positional, name="OUT")
    assert out is not None  # required
    check_out_path(out, kind="file")
    from lrs_core.evaluation.merge import merge_predictions

    with reported_errors():
        summary = merge_predictions(predictions, out)
    if json_output:
        print_json(
            {
                "out": str(summary.out),
                "rows": summary.n_rows,
                "duplicates": summary.n_duplicates,
                "failed": summary.n_failed,
            }
        )
    else:
        console.print(
            f"{summary.n_rows} lines ({summary.n_failed} failed, {summary.n_duplicates} duplicates "
            f"dropped) -> {summary.out}",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command group to ``app``."""
    app.add_typer(eval_app)
