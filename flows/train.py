"""Flow ``train-rfm``: distil the Region Focus Module of a model on a GPU worker.

A thin flow over :func:`tasks.train.train_rfm_task` (which carries the ``gpu`` tag): it runs the
training, then publishes the metrics curve as a table artifact and the result as markdown. A rerun
with the same ``out`` resumes from the newest checkpoint; a finished run does no more steps.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lrs_core.distill import read_metrics
from tasks.train import train_rfm_task

METRICS_ARTIFACT_KEY = "train-rfm-metrics"
SUMMARY_ARTIFACT_KEY = "train-rfm-summary"
#: Metrics lines shown in the table artifact at most (evenly thinned beyond that).
MAX_METRIC_ROWS = 200


@flow(name="train-rfm")
def train_rfm(
    model: str,
    data: str,
    out: str,
    steps: int = 1000,
    preset: str = "default",
    config: dict[str, Any] | None = None,
    device: str = "auto",
    resume: bool = True,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Train the RFM of ``model`` on ``data``; the trained model lands in ``OUT/model``.

    Args:
        model: the model directory.
        data: LLaVA-style ``.json`` or LRS-VQA-style ``.jsonl`` training data.
        out: the run folder.
        steps: optimizer steps.
        preset: ``default`` (ours) or ``parity`` (the reference's loss choices).
        config: further :class:`lrs_core.distill.DistillConfig` fields (``batch_size``, ``lr``,
            ``trainable``, ``views``...).
        device: torch device (``cuda`` on a GPU worker).
        resume: continue from the newest checkpoint in ``out``.
        data_root: folder the data's image paths are relative to.

    Returns:
        ``out_dir``, ``model_dir``, ``steps``, ``final_metrics``.
    """
    logger = get_run_logger()
    result = train_rfm_task(
        model,
        data,
        out,
        steps,
        preset=preset,
        config=config,
        device=device,
        resume=resume,
        data_root=data_root,
    )
    lines = read_metrics(out)
    stride = max(1, len(lines) // MAX_METRIC_ROWS)
    create_table_artifact(
        table=[
            {k: v for k, v in line.items() if isinstance(v, (int, float, str))}
            for line in lines[::stride]
        ],
        key=METRICS_ARTIFACT_KEY,
        description=f"Distillation metrics of {out}",
    )
    final = result["final_metrics"]
    create_markdown_artifact(
        markdown="\n".join(
            [
                "# RFM distillation",
                "",
                f"- model: `{model}`; data: `{data}`",
                f"- steps: {result['steps']}",
                f"- trained model: `{result['model_dir']}` (load it with `lrs ask --model`)",
                "",
                "| metric | value |",
                "|---|---|",
                *[f"| {k} | {v} |" for k, v in final.items()],
            ]
        )
        + "\n",
        key=SUMMARY_ARTIFACT_KEY,
        description="RFM distillation result",
    )
    logger.info("trained model in %s", result["model_dir"])
    return result


if __name__ == "__main__":
    import sys

    train_rfm(model=sys.argv[1], data=sys.argv[2], out=sys.argv[3])
