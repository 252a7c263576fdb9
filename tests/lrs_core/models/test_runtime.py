"""Device/dtype resolution and the checkpoint's generation settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lrs_core.batch.ask import load_engine
from lrs_core.cli import build_app
from lrs_core.errors import ConfigError, WeightsError
from lrs_core.models.loading.auto import load_model
from lrs_core.models.loading.project import save_model
from lrs_core.models.runtime import (
    GenerationSettings,
    checkpoint_dtype,
    resolve_device,
    resolve_dtype,
)
from lrs_core.raster.pyramid import open_pyramid
from tests.fixtures.cli import ask_argv

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NO_CUDA = not torch.cuda.is_available()


def test_auto_device_and_dtype_on_this_machine() -> None:
    device = resolve_device("auto")
    assert device.type == ("cpu" if NO_CUDA else "cuda")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(ConfigError, match="--dtype 'int8'"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0")


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line_and_exit_2(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="use --device cpu"):
        resolve_device("cuda")
    result = CliRunner().invoke(
        build_app(), ["model", "info", str(tiny_model_dir), "--load", "--device", "cuda"]
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "CPU-only" in result.output


def test_checkpoint_dtype_is_the_stored_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert checkpoint_dtype(tiny_model_dir) == torch.float32
    loaded = load_model(tiny_model_dir, dtype="bf16")
    out = save_model(loaded.model, loaded.tokenizer, tmp_path / "bf16")
    assert checkpoint_dtype(out) == torch.bfloat16
    # auto on CUDA would pick it; on CPU auto stays float32
    assert resolve_dtype("auto", torch.device("cpu"), out) == torch.float32
    assert load_model(out).model.dtype == torch.float32


def _with_generation_config(source: Path, dest: Path, config: dict[str, object]) -> Path:
    shutil.copytree(source, dest)
    (dest / "generation_config.json").write_text(json.dumps(config))
    return dest


def test_generation_config_sets_stops_and_length(
    tiny_model_dir: Path, ingested_store: Path, tmp_path: Path
) -> None:
    question = "How many ships are in the harbour?"
    pyramid = open_pyramid(ingested_store)
    plain = load_engine(tiny_model_dir, preset="thumbnail", overrides={"max_new_tokens": 4})
    first = plain.answer(pyramid, question)
    assert first.accounting.decode_steps >= 2, "the random model must say something first"
    token = plain.tokenizer(first.answer, add_special_tokens=False).input_ids[0]

    model_dir = _with_generation_config(
        tiny_model_dir, tmp_path / "gen", {"eos_token_id": [token, 999], "max_new_tokens": 3}
    )
    engine = load_engine(model_dir, preset="thumbnail")
    assert engine.config.generation.max_new_tokens == 3  # the checkpoint's default
    assert engine.loaded.stop_token_ids == [plain.tokenizer.eos_token_id, token, 999]
    stopped = engine.answer(pyramid, question)
    assert stopped.answer == "" and stopped.accounting.decode_steps == 1
    override = load_engine(model_dir, preset="thumbnail", overrides={"max_new_tokens": 2})
    assert override.config.generation.max_new_tokens == 2


def test_generation_config_int_and_bad_values(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 7}')
    assert GenerationSettings.read(tmp_path).stop_token_ids(2) == [2, 7]
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": "x"}')
    with pytest.raises(WeightsError, match="eos_token_id"):
        GenerationSettings.read(tmp_path)
    assert GenerationSettings.read(tmp_path / "none").eos_token_ids == ()


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "command",
    [
        ["ask", "--scene", "s.zarr", "--model", "m", "--question", "q"],
        ["eval", "run", "lrs-vqa", "--data", "d", "--model", "m", "--out", "o.jsonl"],
        ["train-rfm", "--model", "m", "--data", "d.json", "--out", "o"],
        ["demo", "--out", "o"],
        ["model", "info", "m", "--load"],
    ],
)
@pytest.mark.parametrize(
    ("option", "message"), [("--device=cuda", "CPU-only"), ("--dtype=int4", "--dtype")]
)
def test_every_model_command_rejects_cuda_and_bad_dtype_with_exit_2(
    command: list[str], option: str, message: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(build_app(), [*command, option])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_ask_runs_in_bf16(tiny_model_dir: Path, ingested_store: Path) -> None:
    result = CliRunner().invoke(
        build_app(),
        ask_argv(
            ingested_store,
            tiny_model_dir,
            "--question",
            "Is there a bridge?",
            "--preset",
            "thumbnail",
            "--max-new-tokens",
            "2",
            "--dtype",
            "bf16",
            "--json",
        ),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["accounting"]["decode_steps"] >= 1
