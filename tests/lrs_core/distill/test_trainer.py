"""The distillation loop: it learns, resumes exactly after a kill, and the CLI writes a model.

Learning evidence (measured on CPU: 8-layer random teacher with init std 0.05, RFM list (3, 6) so
the RFM holds copies of LLM layers 2, 3, 6; 150 steps of batch 4 on fresh random feature grids;
held-out top-25% recall at the last pair over 16 held-out grids). Teacher seeds 0, 1, 2: before
0.21, 0.23, 0.16 (the truncated student sits at or below the 0.25 chance level), after 0.78, 0.81,
0.84. The test (seed 0) asserts before <= 0.35 and after >= 0.7.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lrs_core.cli import build_app
from lrs_core.distill import DistillConfig, read_metrics, train_records, train_rfm
from lrs_core.distill.trainer import CHECKPOINTS_DIR, TRAINABLE_FILE
from lrs_core.errors import ConfigError
from lrs_core.models.loading.auto import load_model
from lrs_core.models.loading.loaded import LoadedModel
from tests.lrs_core.distill.helpers import build_teacher, feature_grid_records
from tests.lrs_core.distill.test_data import write_llava_json, write_png

#: Teacher init std of the learning test: the student starts below chance and can learn it.
LEARNING_INIT_STD = 0.05
RECALL_BEFORE_AT_MOST = 0.35
RECALL_AFTER_AT_LEAST = 0.7


@pytest.mark.usefixtures("one_torch_thread")
def test_distillation_lifts_held_out_topk_recall(tmp_path: Path) -> None:
    loaded = build_teacher(seed=0, init_std=LEARNING_INIT_STD)
    rfm_before = {k: v.clone() for k, v in loaded.model.rfm.state_dict().items()}
    llm_before = {k: v.clone() for k, v in loaded.model.llm.state_dict().items()}
    steps = 150
    config = DistillConfig(
        steps=steps,
        batch_size=4,
        lr=3e-3,
        schedule="constant",
        warmup_steps=10,
        log_interval=50,
        ckpt_interval=steps,
        eval_interval=steps,
        eval_samples=16,
    )
    records = feature_grid_records(steps * 4 + 16, seed=1)
    result = train_records(loaded, records, tmp_path / "run", config=config, resume=False)
    metrics = read_metrics(tmp_path / "run")
    before, after = metrics[0]["topk_recall"], metrics[-1]["topk_recall"]
    assert metrics[0]["step"] == 0 and metrics[-1]["step"] == steps
    assert before <= RECALL_BEFORE_AT_MOST, metrics
    assert after >= RECALL_AFTER_AT_LEAST, metrics
    assert metrics[-1]["loss"] < metrics[1]["loss"]
    for line in metrics[1:]:
        assert {"loss", "kl_full", "kl_img", "mse_img", "lr", "tokens_per_s"} <= set(line)
    # only the RFM changed: the LVLM's own answers are untouched
    assert any(not torch.equal(v, rfm_before[k]) for k, v in loaded.model.rfm.state_dict().items())
    for key, value in loaded.model.llm.state_dict().items():
        assert torch.equal(value, llm_before[key]), key
    assert result.final_metrics["topk_recall"] == after


def _resume_config(**overrides: object) -> DistillConfig:
    values: dict[str, object] = dict(
        steps=6, batch_size=2, lr=1e-3, ckpt_interval=2, log_interval=1, eval_samples=2, seed=3
    )
    values.update(overrides)
    return DistillConfig(**values)  # type: ignore[arg-type]  # test-only overrides


class _Killed(Exception):
    """Stands in for a kill after a step (the process dies; nothing after it runs)."""


@pytest.mark.usefixtures("one_torch_thread")
def test_killed_and_resumed_run_ends_bit_identical(tmp_path: Path) -> None:
    records = feature_grid_records(14, seed=5)
    config = _resume_config()
    straight = train_records(
        build_teacher(init_std=LEARNING_INIT_STD), records, tmp_path / "a", config=config
    )

    def kill_at_5(step: int, total: int) -> None:
        if step == 5:
            raise _Killed

    with pytest.raises(_Killed):
        train_records(
            build_teacher(init_std=LEARNING_INIT_STD),
            records,
            tmp_path / "b",
            config=config,
            progress=kill_at_5,
        )
    saved = sorted(p.name for p in (tmp_path / "b" / CHECKPOINTS_DIR).iterdir())
    assert saved == ["step-000002", "step-000004"]  # keep_checkpoints=2; step 5 never saved
    resumed = train_records(
        build_teacher(init_std=LEARNING_INIT_STD), records, tmp_path / "b", config=config
    )
    final_a = load_file(str(tmp_path / "a" / CHECKPOINTS_DIR / "step-000006" / TRAINABLE_FILE))
    final_b = load_file(str(tmp_path / "b" / CHECKPOINTS_DIR / "step-000006" / TRAINABLE_FILE))
    assert final_a.keys() == final_b.keys() and final_a
    for name, tensor in final_a.items():
        assert torch.equal(tensor, final_b[name]), name
    steps_b = [line["step"] for line in read_metrics(tmp_path / "b")]
    assert steps_b == list(range(0, 7))  # lines after the checkpoint were re-logged once
    loss_a = [line["loss"] for line in read_metrics(tmp_path / "a")]
    loss_b = [line["loss"] for line in read_metrics(tmp_path / "b")]
    assert loss_a == loss_b
    assert straight.final_metrics["topk_recall"] == resumed.final_metrics["topk_recall"]
    # resuming a finished run does nothing more; changed settings are refused
    with pytest.raises(ConfigError, match="other settings"):
        train_records(
            build_teacher(init_std=LEARNING_INIT_STD),
            records,
            tmp_path / "b",
            config=_resume_config(lr=2e-3),
        )


def test_cli_trains_on_a_png_scene_and_writes_a_loadable_model(
    tmp_path: Path, tiny_model_dir: Path, one_torch_thread: None
) -> None:
    (tmp_path / "data").mkdir()
    write_png(tmp_path / "data" / "scene.png")
    data = write_llava_json(tmp_path / "data" / "train.json", "scene.png", n=3)
    out = tmp_path / "run"
    args = [
        "train-rfm",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--lr",
        "1e-3",
        "--views",
        "single",
        "--eval-samples",
        "1",
        "--log-interval",
        "1",
        "--json",
    ]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2]
    for line in lines:
        assert {"step", "loss", "topk_recall"} <= set(line)
        assert 0.0 <= line["topk_recall"] <= 1.0
    assert (out / "checkpoints" / "step-000002" / "state.json").is_file()
    trained = load_model(out / "model")
    original = load_model(tiny_model_dir)
    assert trained.model.config == original.model.config
    changed = [
        k
        for k, v in trained.model.rfm.state_dict().items()
        if not torch.equal(v, original.model.rfm.state_dict()[k])
    ]
    assert changed
    for key, value in trained.model.llm.state_dict().items():
        assert torch.equal(value, original.model.llm.state_dict()[key]), key
    # a second call resumes the finished run and does no more steps
    again = CliRunner().invoke(build_app(), args)
    assert again.exit_code == 0, again.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    bad = CliRunner().invoke(build_app(), [*args[:-1], "--trainable", "llm-only"])
    assert bad.exit_code == 2


def test_train_rfm_on_a_zarr_store_with_the_projector_trainable(
    tmp_path: Path, tiny_model_dir: Path, ingested_store: Path, one_torch_thread: None
) -> None:
    rows = [
        {"question_id": f"FAIR_{i}", "image": str(ingested_store), "text": q, "ground_truth": a}
        for i, (q, a) in enumerate([("How many ships?", "two"), ("Roof colour?", "red")] * 2)
    ]
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DistillConfig(
        steps=2, batch_size=2, trainable="rfm+projector", eval_samples=1, views="single"
    )
    result = train_rfm(tiny_model_dir, data, tmp_path / "run", config=config)
    trained = load_model(result.model_dir)
    original: LoadedModel = load_model(tiny_model_dir)
    assert not torch.equal(
        trained.model.projector.state_dict()["0.weight"],
        original.model.projector.state_dict()["0.weight"],
    )
    assert result.final_metrics["step"] == 2


@pytest.mark.usefixtures("one_torch_thread")
def test_bf16_autocast_and_gradient_accumulation_run(tmp_path: Path) -> None:
    loaded = build_teacher(init_std=LEARNING_INIT_STD)
    config = DistillConfig(
        steps=2, batch_size=2, grad_accum=2, precision="bf16", eval_samples=2, log_interval=1
    )
    result = train_records(loaded, feature_grid_records(10, seed=7), tmp_path, config=config)
    lines = read_metrics(tmp_path)
    assert [line["step"] for line in lines] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(line["loss"])) for line in lines[1:])
    assert lines[1]["samples_per_s"] > 0
    assert result.model_dir.is_dir()
    assert next(loaded.model.rfm.parameters()).dtype == torch.float32
