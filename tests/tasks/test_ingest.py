"""The ingest task (through ``.fn()``) and the retry condition it uses."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from prefect.logging import disable_run_logger
from prefect.states import Failed

from lrs_core.errors import ConfigError, SceneNotFoundError, SceneReadError
from tasks._retry import is_transient_error, retry_condition_fn
from tasks.ingest import ingest_config_from, ingest_scene_task
from tests.fixtures.scenes import make_rgb_pattern, write_geotiff

#: Every finished store a test here writes is verified afterwards (lrs verify).
pytestmark = pytest.mark.usefixtures("verify_written_stores")

SMALL_CONFIG = {"chunk_px": 64, "levels_per_pass": 2, "n_workers": 1, "min_long_side_px": 64}


@pytest.fixture
def small_geotiff(tmp_path: Path) -> Path:
    return write_geotiff(tmp_path / "small.tif", make_rgb_pattern(150, 230))


def test_task_ingests_then_skips(tmp_path: Path, small_geotiff: Path) -> None:
    stores = tmp_path / "stores"
    with disable_run_logger():
        first = ingest_scene_task.fn(str(small_geotiff), str(stores), config=SMALL_CONFIG)
        second = ingest_scene_task.fn(str(small_geotiff), str(stores), config=SMALL_CONFIG)
    assert first["status"] == "ingested" and second["status"] == "skipped"
    assert first["scene_id"] == "small" and Path(first["store"]) == stores / "small.zarr"
    assert first["level_shapes"][0] == [150, 230]
    assert all(
        isinstance(v, (str, int, float, list, type(None))) for v in first.values()
    )  # small record


def test_task_raises_bad_input_errors(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00garbage" * 20)
    with disable_run_logger():
        with pytest.raises(SceneReadError):
            ingest_scene_task.fn(str(corrupt), str(tmp_path / "stores"), config=SMALL_CONFIG)
        with pytest.raises(SceneNotFoundError):
            ingest_scene_task.fn(str(tmp_path / "missing.tif"), str(tmp_path / "stores"))


def test_ingest_config_from_json_values() -> None:
    assert ingest_config_from(None).chunk_px == 512
    assert ingest_config_from({"bands": [3, 2, 1]}).bands == (3, 2, 1)
    with pytest.raises(ConfigError, match="unknown field"):
        ingest_config_from({"chunk_size": 3})
    with pytest.raises(ConfigError, match="chunk_px"):
        ingest_config_from({"chunk_px": 3})


def transient_chain() -> BaseException:
    try:
        try:
            raise ConnectionResetError(errno.ECONNRESET, "peer reset")
        except ConnectionResetError as err:
            raise RuntimeError("zarr write failed") from err
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError("read timed out"), True),
        (ConnectionResetError("reset"), True),
        (OSError(errno.EIO, "input/output error"), True),
        (transient_chain(), True),
        (type("ServerDisconnectedError", (Exception,), {})("gone"), True),
        (FileNotFoundError(errno.ENOENT, "missing"), False),
        (PermissionError(errno.EACCES, "denied"), False),
        (SceneReadError("corrupt.tif: cannot decode pixels"), False),
        (SceneNotFoundError("missing.tif"), False),
        (ValueError("bad value"), False),
    ],
)
def test_retry_only_transient_errors(exc: BaseException, expected: bool) -> None:
    assert is_transient_error(exc) is expected
    assert retry_condition_fn(None, None, Failed(data=exc)) is expected  # type: ignore[arg-type]


def test_lrs_error_raised_from_a_transient_one_is_not_retried() -> None:
    try:
        try:
            raise TimeoutError("slow disk")
        except TimeoutError as err:
            raise SceneReadError("scene.tif: cannot decode pixels") from err
    except SceneReadError as exc:
        assert not is_transient_error(exc)


def test_prefect_retries_transient_errors_only(prefect_harness: Path) -> None:
    from prefect import flow, task

    attempts: dict[str, int] = {"transient": 0, "bad_input": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_condition_fn)
    def flaky(kind: str) -> str:
        attempts[kind] += 1
        if kind == "transient" and attempts[kind] == 1:
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        if kind == "bad_input":
            raise SceneReadError("corrupt.tif: cannot decode pixels")
        return "ok"

    @flow
    def run_both() -> list[object]:
        return [
            flaky.submit("transient").result(raise_on_failure=False),
            flaky.submit("bad_input").result(raise_on_failure=False),
        ]

    transient, bad = run_both()
    assert transient == "ok" and attempts["transient"] == 2  # retried once, then succeeded
    assert isinstance(bad, SceneReadError) and attempts["bad_input"] == 1  # never retried
