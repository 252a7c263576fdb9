"""``lrs eval``: score benchmark predictions, build the synthetic set, report focus metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    """Score LRS-VQA predictions as the reference does (spec §7.3); accuracies in percent."""
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


@eval_app.command("synth")
def synth_command(
    out_dir: Annotated[
        Path, typer.Argument(help="Data root to create (LRS_VQA/image/ + question file).")
    ],
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
    """Write an offline LRS-VQA-format benchmark with planted objects of known answers."""
    from lrs_core.cli._common import console, print_json, progress_bar, reported_errors
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
        with progress_bar("writing scenes", enabled=not json_output) as progress:
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


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command group to ``app``."""
    app.add_typer(eval_app)
