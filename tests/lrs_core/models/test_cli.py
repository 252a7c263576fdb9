"""The ``lrs model`` command group (lrs_core/cli/model.py)."""

import json

import pytest
from typer.testing import CliRunner

from lrs_core.cli import build_app

runner = CliRunner()


def run(*args):
    return runner.invoke(build_app(), ["model", *args])


def test_init_tiny_then_info(tmp_path):
    result = run("init-tiny", "--out", str(tmp_path / "m"), "--family", "qwen2", "--seed", "2")
    assert result.exit_code == 0, result.output
    result = run("info", str(tmp_path / "m"), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["layout"] == "project"
    assert info["config"]["llm_family"] == "qwen2" and info["config"]["chat_template"] == "chatml"
    assert info["tokens_per_tile"] == 144
    assert info["rfm_source_layers"] == [1, 2, 3]


def test_usage_errors_exit_2(tmp_path):
    assert run("init-tiny", "--out", str(tmp_path), "--family", "gpt").exit_code == 2
    assert (
        run(
            "convert", str(tmp_path), "--out", str(tmp_path / "o"), "--llm-layer-list", "a,b"
        ).exit_code
        == 2
    )


def test_convert_reports_a_bad_source(tmp_path):
    result = run("convert", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "not found" in result.output


def test_flops_json_for_known_configs():
    pytest.importorskip("lrs_core.models.flops")
    result = run(
        "flops", "--config", "qwen2-7b", "--vision-tiles", "5", "--prefill-tokens", "2000", "--json"
    )
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)
    assert counts["total_flops"] == pytest.approx(counts["vision_flops"] + counts["llm_flops"])
    assert counts["llm_flops"] > 2 * 7e9 * 2000 * 0.9  # about 2 FLOPs per parameter per token
    bigger = json.loads(
        run(
            "flops",
            "--config",
            "qwen2-7b",
            "--vision-tiles",
            "10",
            "--prefill-tokens",
            "2000",
            "--json",
        ).stdout
    )
    assert bigger["vision_flops"] == pytest.approx(2 * counts["vision_flops"])
    assert (
        run("flops", "--config", "gpt-4", "--vision-tiles", "1", "--prefill-tokens", "1").exit_code
        == 2
    )


def test_convert_a_paper_checkpoint(tmp_path):
    from lrs_core.models.tiny import build_tiny
    from tests.lrs_core.models.test_convert import write_paper_checkpoint

    model, tokenizer = build_tiny(family="qwen2", seed=4)
    write_paper_checkpoint(tmp_path / "paper", model, tokenizer)
    result = run("convert", str(tmp_path / "paper"), "--out", str(tmp_path / "project"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "source": str(tmp_path / "paper"),
        "model_dir": str(tmp_path / "project"),
    }
    info = json.loads(run("info", str(tmp_path / "project"), "--json").stdout)
    assert info["layout"] == "project" and info["config"]["max_context_tokens"] == 8192
