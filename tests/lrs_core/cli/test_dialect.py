"""The dialect every ``lrs`` command speaks: fast help, ``--json``, ``--out``, progress, help text.

* ``lrs --help``, ``lrs <cmd> --help`` and usage errors import no heavy library (checked in a
  fresh interpreter through ``sys.modules``, not with a timer).
* Every command takes ``--json``; every command that writes files names them with ``--out``.
* Progress shows as plain lines when standard error is not a terminal (``CliRunner`` is not one).
* No help text refers to internal documents ("spec §1.2", ``algorithm.md``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from lrs_core.cli import _common, build_app
from lrs_core.cli._common import PlainProgress, progress_bar

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parents[3]
#: Libraries that cost seconds to import; none may load before a command needs a model or data.
HEAVY_MODULES = ("torch", "transformers", "rasterio", "zarr", "dask", "geopandas", "fastapi")
#: Commands (by path) that write files or folders, so must take ``--out``.
WRITERS = (
    ("ingest",),
    ("batch",),
    ("train-rfm",),
    ("demo",),
    ("eval", "synth"),
    ("eval", "run", "lrs-vqa"),
    ("eval", "run", "mme"),
    ("eval", "merge"),
    ("model", "init-tiny"),
    ("model", "convert"),
)


def _leaf_commands() -> dict[tuple[str, ...], Any]:
    """Every runnable ``lrs`` command by its path, e.g. ``("eval", "run", "mme")``."""
    found: dict[tuple[str, ...], Any] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)  # a group (typer vendors click)
        if subcommands is not None:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
        else:
            found[path] = command

    walk(typer.main.get_command(build_app()), ())
    return found


def _options(command: Any) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


def test_every_command_is_found() -> None:
    paths = set(_leaf_commands())
    assert {("ask",), ("dip",), ("eval", "score"), ("model", "flops")} <= paths
    assert set(WRITERS) <= paths


@pytest.mark.parametrize("path", sorted(_leaf_commands()), ids=" ".join)
def test_every_command_takes_json(path: tuple[str, ...]) -> None:
    assert "--json" in _options(_leaf_commands()[path])


@pytest.mark.parametrize("path", WRITERS, ids=" ".join)
def test_every_writer_takes_out(path: tuple[str, ...]) -> None:
    assert "--out" in _options(_leaf_commands()[path])


def test_help_texts_have_no_internal_references() -> None:
    app = build_app()
    groups = {path[:i] for path in _leaf_commands() for i in range(len(path))}
    for path in sorted(groups | set(_leaf_commands())):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        for reference in ("§", "algorithm.md"):
            assert reference not in result.output, (path, reference, result.output)


def _run_fresh(cases: list[list[str]]) -> dict[str, object]:
    """Run ``lrs`` with each argument list in one fresh interpreter; exit codes + heavy modules."""
    script = (
        "import json, sys\n"
        "import typer\n"
        "from lrs_core.cli import build_app\n"
        "command = typer.main.get_command(build_app())\n"
        "codes = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        command.main(args=args, prog_name='lrs', standalone_mode=True)\n"
        "    except SystemExit as done:\n"
        "        codes.append(done.code)\n"
        f"heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]\n"
        "print('RESULT ' + json.dumps({'codes': codes, 'heavy': heavy}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=True,
    )
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    return dict(json.loads(line.removeprefix("RESULT ")))


def test_help_and_usage_errors_import_no_heavy_library(tmp_path: Path) -> None:
    scene, model = str(tmp_path / "s.zarr"), str(tmp_path / "m")
    ask = ["ask", "--scene", scene, "--model", model]
    cases = [
        ["--help"],
        ["ask", "--help"],
        ["eval", "run", "lrs-vqa", "--help"],
        ["model", "init-tiny", "--help"],
        ["ask"],  # missing options: the parser's usage error
        ask,  # neither --question nor --questions
        [*ask, "--question", "How many ships?", "--budget", "0"],
        [*ask, "--question", "How many ships?", "--dtype", "int4"],
        [*ask, "--question", "How many ships?", "--device", "gpu"],
        [*ask, "--question", "How many ships?", "--preset", "nope", "--dry-run"],
        ["model", "init-tiny", "--out", str(tmp_path / "t"), "--family", "gpt"],
        ["ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--bands", "1,2"],
        ["eval", "merge", "--json", str(tmp_path / "one.jsonl")],
        ["train-rfm", "--model", model, "--data", scene, "--out", model, "--preset", "nope"],
        ["eval", "run", "mme", "--data", scene, "--model", model, "--out", model, "--budget", "0"],
        [
            "eval",
            "run",
            "lrs-vqa",
            "--data",
            scene,
            "--model",
            model,
            "--out",
            model,
            "--preset",
            "x",
        ],
        ["train-rfm", "--model", model, "--data", scene, "--out", model, "--dtype", "bf16"],
    ]
    result = _run_fresh(cases)
    assert result["codes"] == [0, 0, 0, 0] + [2] * (len(cases) - 4)
    assert result["heavy"] == []


def test_dtype_names_match_the_runtime() -> None:
    from lrs_core.models import runtime

    assert set(runtime._DTYPES) | {runtime.DTYPE_AUTO} == _common.DTYPE_NAMES
    assert tuple(runtime.DTYPE_CHOICES) == _common.DTYPE_CHOICES


def test_tiny_families_match_the_model_layer() -> None:
    from lrs_core.cli.model import TINY_FAMILIES
    from lrs_core.models.families.qwen_vl_tiny import TINY_QWEN_FAMILIES

    assert TINY_FAMILIES == ("llava", "qwen2", *TINY_QWEN_FAMILIES)


# -- --json and --out ------------------------------------------------------------------------


def test_init_tiny_json_and_deprecated_positional(tmp_path: Path) -> None:
    result = runner.invoke(
        build_app(), ["model", "init-tiny", "--out", str(tmp_path / "m"), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model_dir"] == str(tmp_path / "m") and data["family"] == "llava"
    assert (tmp_path / "m" / "lrs_model.json").is_file() or any((tmp_path / "m").iterdir())
    # The old positional form works, with a deprecation warning; both forms at once is a misuse.
    old = runner.invoke(build_app(), ["model", "init-tiny", str(tmp_path / "old"), "--json"])
    assert old.exit_code == 0, old.output
    assert json.loads(old.stdout)["model_dir"] == str(tmp_path / "old")
    assert "deprecated" in old.stderr
    both = runner.invoke(
        build_app(), ["model", "init-tiny", str(tmp_path / "a"), "--out", str(tmp_path / "b")]
    )
    assert both.exit_code == 2 and "not both" in both.output
    extra = runner.invoke(build_app(), ["model", "init-tiny", str(tmp_path / "a"), "b"])
    assert extra.exit_code == 2 and "unexpected arguments 'b'" in extra.output


def test_synth_and_convert_keep_the_positional_form(tmp_path: Path) -> None:
    args = ["--scenes", "1", "--large-side", "700", "--side", "700", "--json"]
    old = runner.invoke(build_app(), ["eval", "synth", str(tmp_path / "set"), *args])
    assert old.exit_code == 0, old.output
    assert json.loads(old.stdout)["data_root"] == str(tmp_path / "set")
    assert "deprecated; use --out" in old.stderr
    missing = runner.invoke(build_app(), ["model", "convert", str(tmp_path / "src")])
    assert missing.exit_code == 2 and "--out" in missing.output


def test_serve_json_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    served: list[int] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(kwargs["port"]))
    result = runner.invoke(
        build_app(), ["serve", "--stores", str(tmp_path), "--port", "8123", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "url": "http://127.0.0.1:8123/",
        "stores": str(tmp_path),
        "answers": [],
    }
    assert served == [8123]


def _prediction_file(path: Path, ids: list[str]) -> Path:
    rows = [{"question_id": q, "answer": "2", "model_id": "m"} for q in ids]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_merge_takes_out_and_the_old_form(tmp_path: Path) -> None:
    first = _prediction_file(tmp_path / "c0.jsonl", ["a", "b"])
    second = _prediction_file(tmp_path / "c1.jsonl", ["c"])
    result = runner.invoke(
        build_app(),
        ["eval", "merge", str(first), str(second), "--out", str(tmp_path / "m.jsonl"), "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 3
    old = runner.invoke(
        build_app(), ["eval", "merge", str(tmp_path / "old.jsonl"), str(first), str(second)]
    )
    assert old.exit_code == 0, old.output
    assert len((tmp_path / "old.jsonl").read_text().splitlines()) == 3
    assert "deprecated" in old.stderr


# -- progress --------------------------------------------------------------------------------


def test_synth_shows_plain_progress_when_not_a_terminal(tmp_path: Path) -> None:
    args = ["eval", "synth", "--out", str(tmp_path / "set"), "--scenes", "2"]
    result = runner.invoke(build_app(), [*args, "--large-side", "800", "--side", "700"])
    assert result.exit_code == 0, result.output
    lines = [x for x in result.stderr.splitlines() if x.startswith("writing scenes:")]
    assert lines[0].startswith("writing scenes: 0/2 (0%)")
    assert lines[-1].startswith("writing scenes: 2/2 (100%)")
    assert "\x1b[" not in result.stderr  # no terminal control codes in a log


def _printed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    printed: list[str] = []
    monkeypatch.setattr(_common.console, "print", lambda text, **_: printed.append(str(text)))
    return printed


def test_plain_progress_is_rate_limited_and_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    printed = _printed(monkeypatch)
    progress = PlainProgress("eval", total=100, interval_s=30.0, clock=lambda: now[0])
    for done in range(0, 101):
        now[0] = done * 0.5  # 0.5 s per item: the 10 % steps come before 30 s pass
        progress(done, 100)
    progress(100, 100)  # a repeated last call prints nothing more
    progress(1, 10)  # a count that goes back starts a new round
    assert printed[0] == "eval: 0/100 (0%), 0 s elapsed"
    assert printed[1] == "eval: 10/100 (10%), 5 s elapsed, ~45 s left"
    assert printed[10] == "eval: 100/100 (100%), 50 s elapsed"
    assert len(printed) == 12 and printed[11].startswith("eval: 1/10 (10%)")


def test_plain_progress_prints_every_interval_without_a_total(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    printed = _printed(monkeypatch)
    progress = PlainProgress("train", total=None, interval_s=30.0, clock=lambda: now[0])
    for done in range(1, 11):
        now[0] = done * 10.0
        progress(done)
    assert printed == [
        "train: 1 done, 10 s elapsed",
        "train: 4 done, 40 s elapsed",
        "train: 7 done, 70 s elapsed",
        "train: 10 done, 100 s elapsed",
    ]


def test_progress_bar_disabled_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar("quiet", enabled=False, total=3) as update:
        update(3, 3)
    assert capsys.readouterr().err == ""
