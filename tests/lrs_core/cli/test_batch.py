"""``lrs batch``: a CSV in, GeoParquet + GeoJSON + overlays out; resumable; no Prefect needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import lrs_core.batch.run as batch_run
from lrs_core.cli import build_app
from lrs_core.outputs.parts import read_answers_table, read_records
from tests.fixtures.scenes import make_rgb_pattern, write_geotiff

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()
ORCHESTRATION = ("prefect", "flows", "tasks")
#: Runs ``lrs`` with every import of Prefect, ``flows`` and ``tasks`` failing, then reports on
#: stderr which of them ended up in ``sys.modules`` (none may).
NO_PREFECT_LRS = f"""
import importlib.abc, sys

BLOCKED = {ORCHESTRATION!r}

class NoOrchestration(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
        return None

sys.meta_path.insert(0, NoOrchestration())
from lrs_core.cli import main
sys.argv = ["lrs", *sys.argv[1:]]
try:
    main()
finally:
    leaked = sorted(k for k in sys.modules if k.split(".")[0] in BLOCKED)
    sys.stderr.write("LEAKED=" + ",".join(leaked) + "\\n")
"""


def _csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["scene,question,id", *(f"{s},{q},{i}" for s, q, i in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _batch(*args: str) -> tuple[int, dict[str, Any] | None, str]:
    result = runner.invoke(build_app(), ["batch", *args])
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    return result.exit_code, report, result.output


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "answers.parquet").glob("part-*"))}


def test_batch_answers_a_csv_and_resumes_after_a_kill_between_scenes(
    tmp_path: Path,
    tiny_model_dir: Path,
    ingested_store: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raster = write_geotiff(tmp_path / "fresh.tif", make_rgb_pattern(200, 300, seed=3))
    requests = _csv(
        tmp_path / "requests.csv",
        [
            (str(ingested_store), "Where is the red roof?", "store-q"),
            (str(raster), "How many fields?", "raster-q"),
            ("fresh", "Is it urban?", "by-id"),  # the raster's id: found after its ingest
        ],
    )
    out, stores = tmp_path / "out", tmp_path / "stores"
    args = [str(requests), "--model", str(tiny_model_dir), "--out", str(out)]
    args += ["--stores", str(stores), "--preset", "thumbnail", "--json"]

    class Killed(BaseException):
        """Stands for the process dying between two scenes."""

    original = batch_run.answer_scene
    scenes_started: list[str] = []

    def answer_then_die(store: str, *a: Any, **kw: Any) -> list[dict[str, Any]]:
        scenes_started.append(store)
        if len(scenes_started) == 2:
            raise Killed
        return original(store, *a, **kw)

    monkeypatch.setattr(batch_run, "answer_scene", answer_then_die)
    with pytest.raises(Killed):
        runner.invoke(build_app(), ["batch", *args])
    monkeypatch.setattr(batch_run, "answer_scene", original)
    assert [r.question_id for r in read_records(out)] == ["store-q"]
    before = _parts(out)

    code, report, output = _batch(*args)
    assert code == 0, output
    assert report is not None and report["counts"] == {"answered": 2, "skipped": 1, "failed": 0}
    assert {r["question_id"]: r["status"] for r in report["rows"]} == {
        "store-q": "skipped",
        "raster-q": "answered",
        "by-id": "answered",
    }
    answered = [r for r in report["rows"] if r["status"] == "answered"]
    assert all(0 < r["vision_tokens"] < r["full_vision_tokens"] for r in answered)
    after = _parts(out)
    assert {k: after[k] for k in before} == before and len(after) == len(before) + 2
    table = read_answers_table(out)
    assert sorted(table["question_id"]) == ["by-id", "raster-q", "store-q"]
    assert table.crs is not None and table.crs.to_epsg() == 4326
    features = json.loads((out / "answers.geojson").read_text())["features"]
    assert {f["properties"]["question_id"] for f in features} == {"store-q", "raster-q", "by-id"}
    assert sorted(p.name for p in (out / "overlays").glob("*.png")) == [
        "by-id.png",
        "raster-q.png",
        "store-q.png",
    ]
    assert (stores / "fresh.zarr").is_dir()

    again = runner.invoke(build_app(), ["batch", *args[:-1]])  # nothing left: a summary line
    assert again.exit_code == 0 and "answered 0, skipped 3" in again.output
    assert _parts(out) == after


def test_failed_questions_exit_1_with_a_summary(
    tmp_path: Path, tiny_model_dir: Path, ingested_store: Path
) -> None:
    requests = _csv(
        tmp_path / "r.csv",
        [(str(ingested_store), "What is red?", "a"), ("nowhere", "What?", "b")],
    )
    out = tmp_path / "out"
    result = runner.invoke(
        build_app(),
        ["batch", str(requests), "--model", str(tiny_model_dir), "--out", str(out)]
        + ["--stores", str(tmp_path / "stores"), "--preset", "thumbnail", "--budget", "100"],
    )
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 2 questions failed") and str(out) in last
    assert "failed b: scene 'nowhere' is neither a store path" in result.output


@pytest.mark.parametrize(
    ("setup", "extra", "code", "message"),
    [
        ("missing", [], 1, "requests file not found"),
        ("badheader", [], 1, "the CSV header"),
        ("ok", ["--preset", "fancy"], 2, "preset"),
        ("ok", ["--budget", "0"], 2, "--budget 0"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path,
    tiny_model_dir: Path,
    ingested_store: Path,
    setup: str,
    extra: list[str],
    code: int,
    message: str,
) -> None:
    requests = tmp_path / "r.csv"
    if setup == "badheader":
        requests.write_text("image_path,query\nx,y\n")
    elif setup == "ok":
        _csv(requests, [(str(ingested_store), "Q?", "a")])
    result = runner.invoke(
        build_app(),
        ["batch", str(requests), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]
        + extra,
    )
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "o" / "answers.parquet").exists()


def test_batch_runs_with_prefect_unimportable(
    tmp_path: Path, tiny_model_dir: Path, ingested_store: Path
) -> None:
    raster = write_geotiff(tmp_path / "small.tif", make_rgb_pattern(120, 170, seed=5))
    requests = _csv(
        tmp_path / "r.csv",
        [(str(ingested_store), "What is red?", "a"), (str(raster), "Is it urban?", "b")],
    )
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", NO_PREFECT_LRS, "batch", str(requests)]
        + ["--model", str(tiny_model_dir), "--out", str(out), "--stores", str(tmp_path / "st")]
        + ["--preset", "thumbnail", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "LEAKED=\n" in done.stderr  # not one of prefect / flows / tasks was imported
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["counts"] == {"answered": 2, "skipped": 0, "failed": 0}
    assert sorted(r.question_id for r in read_records(out)) == ["a", "b"]

    # The blocker is real: the same interpreter set-up cannot import the flows.
    probe = NO_PREFECT_LRS.split("from lrs_core.cli import main")[0] + "import flows.answer\n"
    blocked = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False
    )
    assert blocked.returncode != 0 and "blocked by the test" in blocked.stderr
