"""``lrs demo``: exit codes, JSON report and the terminal rendering of answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrs_core.cli import build_app
from lrs_core.cli.demo import ANSWER_PREVIEW_CHARS, answer_preview


def test_answer_preview_escapes_and_truncates() -> None:
    garbage = "U" + "\ufffd" * 100 + "\x1b[2J"
    shown = answer_preview(garbage)
    assert shown.isascii() and shown.isprintable()
    assert shown.endswith("...")
    assert shown.count("\\ufffd") == ANSWER_PREVIEW_CHARS - 1
    assert answer_preview("yes") == "'yes'"


@pytest.mark.usefixtures("one_torch_thread")
def test_cli_exits_1_when_questions_fail(tmp_path: Path) -> None:
    args = ["demo", "--out", str(tmp_path / "cli"), "--scene-size", "1000x700", "--json"]
    # 100 vision tokens cannot hold the thumbnail: every question fails, and says why.
    result = CliRunner().invoke(build_app(), [*args, "--preset", "thumbnail", "--budget", "100"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["status"] for r in report["rows"]] == ["failed"] * 3
    assert all("TokenBudgetError" in r["error"] for r in report["rows"])
    assert report["answers_parquet"] == str((tmp_path / "cli" / "answers.parquet").resolve())
    usage = CliRunner().invoke(build_app(), [*args, "--scene-size", "big"])
    assert usage.exit_code == 2
