"""``lrs train-rfm``: distil a model's Region Focus Module from its own LLM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrs_core.cli._common import (
    MODEL_HELP,
    DeviceOpt,
    check_out_path,
    check_runtime,
    console,
    fail,
    print_json,
    progress_bar,
    reported_errors,
)


def train_rfm_command(
    model: Annotated[
        Path,
        typer.Option("--model", help=MODEL_HELP),
    ],
    data: Annotated[
        Path,
        typer.Option("--data", help="LLaVA-style .json or LRS-VQA-style .jsonl training data."),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Run folder: metrics.jsonl, checkpoints/, model/.")
    ],
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Samples per micro-batch.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 1e-4,
    trainable: Annotated[str, typer.Option(help="rfm, rfm+projector or all.")] = "rfm",
    preset: Annotated[
        str, typer.Option(help="default (ours) or parity (the loss of the paper's released code).")
    ] = "default",
    views: Annotated[
        str, typer.Option(help="single (coarsest level) or multi (multi-GSD).")
    ] = "multi",
    log_interval: Annotated[int, typer.Option(help="Steps between metrics lines.")] = 10,
    ckpt_interval: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 100,
    eval_samples: Annotated[int, typer.Option(help="Held-out records for topk_recall.")] = 8,
    device: DeviceOpt = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="Weights dtype: auto or fp32 (training keeps float32 master weights; "
            "use --precision bf16 for bf16 compute).",
        ),
    ] = "auto",
    precision: Annotated[str, typer.Option(help="fp32 or bf16 (autocast).")] = "fp32",
    seed: Annotated[int, typer.Option(help="Seed of the data order and held-out split.")] = 0,
    data_root: Annotated[
        Path | None,
        typer.Option(help="Folder image paths are relative to (default: the data file's)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from the newest checkpoint.")
    ] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train the Region Focus Module (RFM) and write the trained model to OUT/model.

    The RFM scores which image tokens matter for a question; it learns to predict the attention
    the model's own language model pays to the image (attention distillation). Resumable: a rerun
    continues from the newest checkpoint in OUT.
    """
    check_runtime(device, dtype)
    if dtype not in ("auto", "fp32", "float32"):
        fail(
            f"--dtype {dtype}: train-rfm keeps float32 master weights; "
            "use --dtype fp32 (or auto) with --precision bf16 for bf16 compute",
            code=2,
        )
    from lrs_core.distill.config import DistillConfig
    from lrs_core.errors import ConfigError

    try:
        config = DistillConfig.preset(
            preset,
            steps=steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            lr=lr,
            trainable=trainable,
            views=views,
            log_interval=log_interval,
            ckpt_interval=ckpt_interval,
            eval_samples=eval_samples,
            device=device,
            precision=precision,
            seed=seed,
        )
    except ConfigError as err:
        fail(str(err), code=2)
    check_out_path(out, kind="folder")
    from lrs_core.distill import train_rfm

    with reported_errors():
        with progress_bar("distilling the RFM", enabled=not json_output) as progress:
            result = train_rfm(
                model,
                data,
                out,
                config=config,
                resume=resume,
                progress=progress,
                data_root=data_root,
            )
    summary = {
        "out_dir": str(result.out_dir),
        "model_dir": str(result.model_dir),
        "steps": result.steps,
        "final_metrics": result.final_metrics,
    }
    if json_output:
        print_json(summary)
        return
    metrics = result.final_metrics
    console.print(
        f"trained {result.steps} steps: loss {metrics.get('loss')}, held-out topk_recall "
        f"{metrics.get('topk_recall')}; model in {result.model_dir}"
    )


def register(app: typer.Typer) -> None:
    """Add ``train-rfm`` to the ``lrs`` application."""
    app.command("train-rfm")(train_rfm_command)
