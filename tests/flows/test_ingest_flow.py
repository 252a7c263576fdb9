"""The ingest flow run for real under Prefect's test harness."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pystac
import pytest

from flows.ingest import expand_scene_sources, ingest_scenes
from tests.fixtures.scenes import make_rgb_pattern, write_geotiff

#: Every finished store a test here writes is verified afterwards (lrs verify).
pytestmark = pytest.mark.usefixtures("verify_written_stores")

#: Seconds allowed for the server to record task-run state events after the flow returns.
EVENTS_SETTLE_S = 60.0
SMALL_CONFIG = {"chunk_px": 64, "levels_per_pass": 2, "n_workers": 1, "min_long_side_px": 64}


async def _run_records(flow_run_id: Any) -> tuple[list[Any], list[Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    async with get_client() as client:
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return task_runs, artifacts


def test_flow_isolates_a_corrupt_scene_and_is_idempotent(
    prefect_harness: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_geotiff(inbox / "good.tif", make_rgb_pattern(120, 170))
    (inbox / "corrupt.tif").write_bytes(b"II*\x00" + b"\x00not a tiff" * 30)
    stores = tmp_path / "stores"

    state = ingest_scenes(
        sources=[str(inbox), str(tmp_path / "nowhere" / "*.tif")],
        store=str(stores),
        config=SMALL_CONFIG,
        return_state=True,
    )
    assert state.is_completed()
    rows = {row["source"]: row for row in state.result()}
    good, corrupt = rows[str(inbox / "good.tif")], rows[str(inbox / "corrupt.tif")]
    assert good["status"] == "ingested" and (stores / "good.zarr").is_dir()
    assert corrupt["status"] == "failed" and "corrupt.tif" in corrupt["error"]
    assert not (stores / "corrupt.zarr").exists()
    assert rows[str(tmp_path / "nowhere" / "*.tif")]["status"] == "failed"

    # Task-run states reach the server as events, processed asynchronously: poll for them.
    deadline = time.monotonic() + EVENTS_SETTLE_S
    while True:
        task_runs, artifacts = asyncio.run(_run_records(state.state_details.flow_run_id))
        task_states = sorted(run.state.type.value for run in task_runs if run.state)
        if task_states == ["COMPLETED", "FAILED"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert task_states == ["COMPLETED", "FAILED"]
    by_key = {artifact.key: artifact for artifact in artifacts if artifact.key}
    table = by_key["ingest-scenes"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert {row["scene_id"]: row["status"] for row in table}["corrupt"] == "failed"
    summary = by_key["ingest-summary"].data
    assert "failed: 2" in summary and "corrupt.tif" in summary and "ingested: 1" in summary

    again = ingest_scenes(sources=[str(inbox / "good.tif")], store=str(stores), config=SMALL_CONFIG)
    assert [row["status"] for row in again] == ["skipped"]


def test_expand_sources_reads_stac_globs_and_repeats(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_geotiff(tmp_path / "a" / "s1.tif", make_rgb_pattern(20, 30))
    write_geotiff(tmp_path / "b" / "s1.tif", make_rgb_pattern(20, 30, seed=1))
    item = pystac.Item(
        id="stac-scene",
        geometry=None,
        bbox=None,
        datetime=None,
        properties={
            "start_datetime": "2024-01-01T00:00:00Z",
            "end_datetime": "2024-01-02T00:00:00Z",
        },
    )
    item.add_asset("visual", pystac.Asset(href="a/s1.tif", media_type=pystac.MediaType.COG))
    bare = pystac.Item(
        id="no-raster",
        geometry=None,
        bbox=None,
        datetime=None,
        properties={
            "start_datetime": "2024-01-01T00:00:00Z",
            "end_datetime": "2024-01-02T00:00:00Z",
        },
    )
    bare.add_asset("metadata", pystac.Asset(href="meta.xml", media_type="application/xml"))
    collection_path = tmp_path / "items.json"
    collection_path.write_text(
        json.dumps(pystac.ItemCollection([item, bare]).to_dict(transform_hrefs=False))
    )

    scenes, problems = expand_scene_sources(
        [str(tmp_path / "**" / "*.tif"), str(collection_path), str(tmp_path / "a" / "s1.tif")]
    )
    assert [(s.source, s.resolved_id) for s in scenes] == [
        (str(tmp_path / "a" / "s1.tif"), "s1"),
        (str((tmp_path / "a" / "s1.tif").resolve()), "stac-scene"),
    ]
    reasons = {p.source: p.error for p in problems}
    assert "already used" in reasons[str(tmp_path / "b" / "s1.tif")]
    assert "no raster asset" in reasons[f"{collection_path}#no-raster"]
