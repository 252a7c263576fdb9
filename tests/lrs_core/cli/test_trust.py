"""Bad output paths and bad options get one clear line and exit 1 or 2, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrs_core.cli import build_app

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(build_app(), list(args), env={"COLUMNS": "400"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a folder\n")
    return path


def _commands(out: Path, tmp_path: Path) -> dict[str, list[str]]:
    data = ["--data", str(tmp_path), "--model", str(tmp_path / "model")]
    return {
        "init-tiny": ["model", "init-tiny", "--out", str(out)],
        "eval run": ["eval", "run", "lrs-vqa", *data, "--out", str(out)],
        "train-rfm": ["train-rfm", *data, "--out", str(out)],
        "demo": ["demo", "--out", str(out)],
    }


@pytest.mark.parametrize("command", ["init-tiny", "eval run", "train-rfm", "demo"])
def test_out_under_a_file_is_one_line_and_exit_1(
    command: str, a_file: Path, tmp_path: Path
) -> None:
    code, output = _run(*_commands(a_file / "sub" / "out", tmp_path)[command])
    assert code == 1
    assert "is a file, not a folder" in _one_error_line(output)


@pytest.mark.parametrize("command", ["init-tiny", "train-rfm", "demo"])
def test_out_folder_that_is_an_existing_file(command: str, a_file: Path, tmp_path: Path) -> None:
    code, output = _run(*_commands(a_file, tmp_path)[command])
    assert code == 1
    line = _one_error_line(output)
    assert str(a_file) in line and "is an existing file" in line
    assert a_file.read_text() == "not a folder\n"


def test_eval_out_that_is_an_existing_folder(tmp_path: Path) -> None:
    folder = tmp_path / "pred"
    folder.mkdir()
    code, output = _run(*_commands(folder, tmp_path)["eval run"])
    assert code == 1
    assert "is an existing folder; give a file path" in _one_error_line(output)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission")
@pytest.mark.parametrize("command", ["init-tiny", "eval run", "train-rfm", "demo"])
def test_out_in_a_read_only_folder(command: str, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, output = _run(*_commands(locked / "out", tmp_path)[command])
    finally:
        locked.chmod(0o700)
    assert code == 1
    assert "cannot be written" in _one_error_line(output)


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_ask_refuses_an_empty_question(text: str, tmp_path: Path) -> None:
    code, output = _run(
        "ask", "--scene", str(tmp_path / "s.zarr"), "--model", str(tmp_path), "--question", text
    )
    assert code == 2
    assert "--question is empty" in _one_error_line(output)


@pytest.mark.parametrize("budget", ["0", "-3"])
def test_budget_below_one_names_the_option_not_a_field(budget: str, tmp_path: Path) -> None:
    for args in (
        ["ask", "--scene", str(tmp_path / "s.zarr"), "--model", str(tmp_path), "--question", "x"],
        ["eval", "run", "lrs-vqa", "--data", str(tmp_path), "--model", str(tmp_path)]
        + ["--out", str(tmp_path / "p.jsonl")],
    ):
        code, output = _run(*args, "--budget", budget)
        assert code == 2
        line = _one_error_line(output)
        assert f"--budget {budget}" in line and "FocusConfig" not in line


@pytest.mark.parametrize("command", ["init-tiny", "eval run", "train-rfm", "demo"])
def test_out_on_a_read_only_filesystem(command: str, tmp_path: Path) -> None:
    out = Path("/sys/lrs-cli-out-check/out")  # /sys refuses new entries, even to root
    try:
        os.makedirs(out.parent)
    except PermissionError:
        pass
    else:  # pragma: no cover - depends on the host
        os.rmdir(out.parent)
        pytest.skip("this host lets the test user write under /sys")
    code, output = _run(*_commands(out, tmp_path)[command])
    assert code == 1
    assert "cannot be written" in _one_error_line(output)
