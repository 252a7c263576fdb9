"""Prefect task around :func:`lrs_core.distill.train_rfm`: distil a model's RFM on one GPU."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lrs_core.distill import DistillConfig, train_rfm
from lrs_core.errors import ConfigError
from tasks._retry import retry_condition_fn
from tasks.answer import GPU_TAG
from tasks.artifacts import progress_reporter

#: Attempts after the first for a transient failure; a retry resumes from the newest checkpoint.
TRAIN_RETRIES = 1
TRAIN_RETRY_DELAYS_S: list[float] = [60.0]
TRAIN_TAGS = ["lrs", GPU_TAG]


def distill_config_from(
    preset: str, *, steps: int, device: str, params: dict[str, Any] | None
) -> DistillConfig:
    """Build a :class:`DistillConfig` from flow parameters (JSON values).

    Args:
        preset: ``default`` or ``parity``.
        steps: optimizer steps of the run.
        device: torch device string.
        params: further :class:`DistillConfig` fields (``skip_layers`` may be a list).

    Raises:
        ConfigError: unknown preset or field, or a value outside its range.
    """
    values = dict(params or {})
    if values.get("skip_layers") is not None:
        values["skip_layers"] = tuple(values["skip_layers"])
    known = set(DistillConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"train config fields {unknown} do not exist; known: {sorted(known)}")
    return DistillConfig.preset(preset, **{**values, "steps": steps, "device": device})


@task(
    name="train-rfm",
    task_run_name="train-rfm-{out}",
    retries=TRAIN_RETRIES,
    retry_delay_seconds=TRAIN_RETRY_DELAYS_S,
    retry_condition_fn=retry_condition_fn,
    tags=TRAIN_TAGS,
    cache_policy=NO_CACHE,  # the run folder's checkpoints make reruns resume, not repeat
)
def train_rfm_task(
    model: str,
    data: str,
    out: str,
    steps: int,
    preset: str = "default",
    config: dict[str, Any] | None = None,
    device: str = "auto",
    resume: bool = True,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Train the RFM of ``model`` on ``data`` into ``out``; return a small JSON summary.

    Args:
        model: the model directory.
        data: LLaVA-style ``.json`` or LRS-VQA-style ``.jsonl`` training data.
        out: the run folder (``metrics.jsonl``, ``checkpoints/``, ``model/``).
        steps: optimizer steps.
        preset: :meth:`DistillConfig.preset` name.
        config: further :class:`DistillConfig` fields.
        device: torch device string.
        resume: continue from the newest checkpoint in ``out``.
        data_root: folder the data's image paths are relative to (default: the data file's).

    Returns:
        ``out_dir``, ``model_dir`` (the trained model), ``steps`` and ``final_metrics``.
    """
    logger = get_run_logger()
    result = train_rfm(
        model,
        data,
        out,
        config=distill_config_from(preset, steps=steps, device=device, params=config),
        resume=resume,
        progress=progress_reporter(f"RFM distillation into {out}"),
        data_root=data_root,
    )
    logger.info(
        "trained %s for %d steps -> %s (%s)",
        model,
        result.steps,
        result.model_dir,
        result.final_metrics,
    )
    return {
        "out_dir": str(result.out_dir),
        "model_dir": str(result.model_dir),
        "steps": result.steps,
        "final_metrics": dict(result.final_metrics),
    }
