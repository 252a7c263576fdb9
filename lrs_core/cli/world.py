"""``lrs world``: make miniature-world scenes with questions, and train a model on them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from lrs_core.cli._common import console, print_json, progress_bar, reported_errors

world_app = typer.Typer(
    name="world",
    help="A miniature remote-sensing world: scenes, DOTA annotations, questions, a trained model.",
    no_args_is_help=True,
)


@world_app.command("make")
def make_command(
    out: Annotated[Path, typer.Option("--out", help="Data root to write.")],
    seed: Annotated[int, typer.Option(help="World seed; the same seed gives the same bytes.")] = 0,
    scenes: Annotated[int, typer.Option(help="Number of scenes.")] = 3,
    size: Annotated[int, typer.Option(help="Side of every scene, px (256..16384).")] = 4096,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Write scenes (GeoTIFF), DOTA annotations and LRS_VQA_merged.jsonl under OUT."""
    from lrs_core.world.make import make_world

    with reported_errors(config_is_usage=True):
        with progress_bar("rendering scenes", enabled=not json_output) as progress:
            result = make_world(out, seed=seed, n_scenes=scenes, size_px=size, progress=progress)
    summary = {
        "data_root": str(result.data_root),
        "question_file": str(result.question_file),
        "scenes": [
            {"image": image, "size_wh": list(scene.size_wh), "objects": len(scene.objects)}
            for image, scene in zip(result.images, result.scenes, strict=True)
        ],
        "questions": len(result.questions),
    }
    if json_output:
        print_json(summary)
        return
    console.print(
        f"{len(result.questions)} questions about {len(result.scenes)} scenes in {result.data_root}"
    )


@world_app.command("train")
def train_command(
    out: Annotated[Path, typer.Option("--out", help="Run folder: model/, metrics.jsonl, ...")],
    minutes: Annotated[float, typer.Option(help="Wall-clock budget of the two stages.")] = 30.0,
    seed: Annotated[int, typer.Option(help="Seed of the weights and the scene streams.")] = 0,
    threads: Annotated[
        int | None, typer.Option(help="Torch threads while training (default: torch's).")
    ] = None,
    eval_scenes: Annotated[int, typer.Option(help="Held-out scenes of the final evaluation.")] = 4,
    stage1_steps: Annotated[
        int | None,
        typer.Option(help="End the tower stage after this many steps (default: its time share)."),
    ] = None,
    stage2_steps: Annotated[
        int | None,
        typer.Option(help="End the answer stage after this many steps (default: the time left)."),
    ] = None,
    stage1_share: Annotated[
        float | None,
        typer.Option(help="Share of the budget spent on the tower's dense targets (default 0.4)."),
    ] = None,
    attention_weight: Annotated[
        float | None,
        typer.Option(
            help="Weight of the evidence-attention loss of the answer stage (0: off; default 0.5)."
        ),
    ] = None,
    distill_steps: Annotated[
        int, typer.Option(help="Steps of RFM distillation after training (0: skip).")
    ] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Train the world model on CPU from scratch (tower on dense targets, then answers)."""
    from lrs_core.world.train import WorldTrainConfig, distill_world_rfm, train_world

    with reported_errors(config_is_usage=True):
        config = WorldTrainConfig(
            seed=seed,
            minutes=minutes,
            threads=threads,
            eval_scenes=eval_scenes,
            stage1_steps=stage1_steps,
            stage2_steps=stage2_steps,
        )
        if stage1_share is not None:
            config = replace(config, stage1_share=stage1_share)
        if attention_weight is not None:
            config = replace(config, attention_weight=attention_weight)
        with progress_bar("training (seconds)", enabled=not json_output) as progress:
            result = train_world(out, config=config, progress=progress)
        model_dir = result.model_dir
        if distill_steps > 0:
            with progress_bar("distilling the RFM", enabled=not json_output) as progress:
                model_dir = distill_world_rfm(
                    model_dir, out, seed=seed, steps=distill_steps, progress=progress
                )
    summary = {"model_dir": str(model_dir), "metrics": result.metrics}
    if json_output:
        print_json(summary)
        return
    for view in ("focus", "thumbnail"):
        console.print(
            f"held-out accuracy ({view} view): {result.metrics[view]['overall']:.3f} "
            f"(untrained {result.metrics['untrained'][view]['overall']:.3f}, answer prior "
            f"{result.metrics['answer_prior']['overall']:.3f})",
            highlight=False,
        )
    console.print(f"model in {model_dir}")


def register(app: typer.Typer) -> None:
    """Add the ``world`` command group to the ``lrs`` application."""
    app.add_typer(world_app, name="world")
