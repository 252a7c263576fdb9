"""The answer flow stays inside its data root and never shares its output folder with a writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.answer import DATA_ROOT_ENV, answer_questions, data_root_of
from flows.outcome import run_result
from lrs_core.locks import WriterLockedError, exclusive_writer
from lrs_core.outputs.parts import BatchCounts
from tests.fixtures.scenes import make_rgb_pattern, write_geotiff

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_requests_escaping_the_data_root_fail_their_rows(
    prefect_harness: Path, tmp_path: Path, tiny_model_dir: Path, ingested_store: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = write_geotiff(tmp_path / "outside.tif", make_rgb_pattern(64, 64, seed=1))
    (root / "link.zarr").symlink_to(ingested_store)  # a link inside that points outside
    requests = [
        {"scene": "../outside.tif", "question": "Q?", "id": "dotdot"},
        {"scene": str(outside), "question": "Q?", "id": "absolute"},
        {"scene": "link.zarr", "question": "Q?", "id": "symlink"},
    ]
    out = tmp_path / "out"
    state = answer_questions(
        requests=requests,
        model=str(tiny_model_dir),
        preset="thumbnail",
        out=str(out),
        store=str(root / "stores"),
        data_root=str(root),
        return_state=True,
    )
    assert state.is_failed()
    rows = run_result(state)
    assert [r["question_id"] for r in rows] == ["dotdot", "absolute", "symlink"]
    for row in rows:
        assert row["status"] == "failed"
        assert f"outside the data root {root.resolve()}; refused" in row["error"]
    assert BatchCounts.from_rows(rows) == BatchCounts(failed=3)
    assert not (out / "answers.parquet").exists() or not any((out / "answers.parquet").iterdir())
    assert not (root / "stores").exists()  # nothing outside the root was ingested


def test_data_root_comes_from_the_parameter_else_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    monkeypatch.setenv(DATA_ROOT_ENV, str(root))
    assert data_root_of(None) == root.resolve()
    assert data_root_of(str(tmp_path)) == tmp_path.resolve()
    monkeypatch.delenv(DATA_ROOT_ENV)
    assert data_root_of(None) is None


def test_a_folder_held_by_another_writer_fails_the_run_before_any_work(
    prefect_harness: Path, tmp_path: Path, tiny_model_dir: Path, ingested_store: Path
) -> None:
    out = tmp_path / "out"
    with exclusive_writer(out, purpose="another answer run"):
        with pytest.raises(WriterLockedError, match="another answer run"):
            answer_questions(
                requests=[{"scene": str(ingested_store), "question": "Q?", "id": "q"}],
                model=str(tiny_model_dir),
                preset="thumbnail",
                out=str(out),
            )
    assert not (out / "answers.parquet").exists()
