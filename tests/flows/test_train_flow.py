"""The train flow under Prefect's test harness, and its config translation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.train import train_rfm
from lrs_core.errors import ConfigError
from lrs_core.models.loading.auto import load_model
from tasks.answer import GPU_TAG
from tasks.train import distill_config_from, train_rfm_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_train_flow_writes_a_loadable_model_and_resumes(
    prefect_harness: Path, tmp_path: Path, tiny_model_dir: Path, ingested_store: Path
) -> None:
    rows = [
        {"question_id": f"FAIR_{i}", "image": str(ingested_store), "text": q, "ground_truth": a}
        for i, (q, a) in enumerate([("How many ships?", "two"), ("Roof colour?", "red")])
    ]
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = {
        "model": str(tiny_model_dir),
        "data": str(data),
        "out": str(tmp_path / "run"),
        "steps": 2,
        "config": {"batch_size": 1, "eval_samples": 1, "views": "single", "log_interval": 1},
    }
    result = train_rfm(**params)
    assert result["steps"] == 2 and result["final_metrics"]["step"] == 2
    assert load_model(result["model_dir"]).model.config == load_model(tiny_model_dir).model.config
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    again = train_rfm(**params)  # finished: resumes at step 2 and does nothing more
    assert again["steps"] == 2
    assert (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() == lines


def test_distill_config_from_flow_parameters() -> None:
    config = distill_config_from(
        "parity", steps=5, device="cpu", params={"skip_layers": [1], "lr": 0.01}
    )
    assert config.steps == 5 and config.skip_layers == (1,) and config.lr == 0.01
    with pytest.raises(ConfigError, match="do not exist"):
        distill_config_from("default", steps=5, device="cpu", params={"learning_rate": 1})
    assert GPU_TAG in train_rfm_task.tags
