"""Flow ``ingest-scenes``: turn files, folders, globs or a STAC ItemCollection into Zarr stores.

One task per scene, submitted at once and run concurrently; a scene that fails (missing, corrupt,
conflicting store) fails its own task only, and the flow finishes the others and lists the failure
in its summary. Finished scenes are skipped on a rerun, so the flow is idempotent.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from lrs_core.raster.ingest import RASTER_SUFFIXES, expand_sources
from tasks.ingest import ingest_scene_task

#: Scenes ingested at the same time by one flow run (each also uses ``IngestConfig.n_workers``).
MAX_CONCURRENT_SCENES = 4
#: Asset keys and roles tried, in order, to find the raster of a STAC item.
STAC_ASSET_KEYS = ("data", "visual", "image", "analytic")
STAC_ASSET_ROLES = ("data", "visual")
STAC_RASTER_MEDIA_PREFIXES = ("image/tiff", "image/png", "image/jpeg", "image/jp2")
GLOB_CHARS = frozenset("*?[")
TABLE_ARTIFACT_KEY = "ingest-scenes"
SUMMARY_ARTIFACT_KEY = "ingest-summary"


@dataclass(frozen=True, kw_only=True)
class SceneSource:
    """One scene to ingest: a local raster path and its scene id (None: the file stem)."""

    source: str
    scene_id: str | None = None

    @property
    def resolved_id(self) -> str:
        """The store name the scene will get."""
        return self.scene_id or Path(self.source).stem


@dataclass(frozen=True, kw_only=True)
class SourceProblem:
    """A source that expanded to no scene, or a scene that cannot be submitted."""

    source: str
    error: str


def _is_stac_json(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".json", ".geojson")


def _stac_asset_href(item: Any) -> str | None:
    """Return the absolute href of an item's raster asset, or None when it has none."""
    assets = item.get_assets()
    for key in STAC_ASSET_KEYS:
        if key in assets:
            return str(assets[key].get_absolute_href())
    for asset in assets.values():
        roles = asset.roles or []
        media = asset.media_type or ""
        if any(role in roles for role in STAC_ASSET_ROLES) or media.startswith(
            STAC_RASTER_MEDIA_PREFIXES
        ):
            return str(asset.get_absolute_href())
    return None


def _expand_stac(path: Path) -> tuple[list[SceneSource], list[SourceProblem]]:
    import pystac

    data = json.loads(path.read_text())
    if data.get("type") == "Feature":
        items = [pystac.Item.from_dict(data, href=str(path.resolve()))]
    elif data.get("type") == "FeatureCollection":
        collection = pystac.ItemCollection.from_dict(data, preserve_dict=False)
        items = list(collection.items)
        for item in items:  # relative asset hrefs are relative to the collection file
            item.set_self_href(str(path.resolve()))
    else:
        return [], [SourceProblem(source=str(path), error="not a STAC Item or ItemCollection")]
    scenes: list[SceneSource] = []
    problems: list[SourceProblem] = []
    for item in items:
        href = _stac_asset_href(item)
        if href is None:
            problems.append(
                SourceProblem(
                    source=f"{path}#{item.id}",
                    error=f"item {item.id!r} has no raster asset (keys {sorted(item.assets)}); "
                    f"name one of {list(STAC_ASSET_KEYS)} or give it role 'data'",
                )
            )
        elif "://" in href and not href.startswith("file://"):
            problems.append(
                SourceProblem(
                    source=f"{path}#{item.id}",
                    error=f"asset {href} is remote; download it first (ingest reads local files)",
                )
            )
        else:
            scenes.append(SceneSource(source=href.removeprefix("file://"), scene_id=item.id))
    return scenes, problems


def expand_scene_sources(sources: list[str]) -> tuple[list[SceneSource], list[SourceProblem]]:
    """Expand paths, folders, globs and STAC JSON files into scenes, in order, without repeats.

    Args:
        sources: each a raster path, a folder (its rasters, not recursive), a glob (``**``
            allowed), or a STAC Item / ItemCollection JSON file (one scene per item, named by
            the item id).

    Returns:
        The scenes, and the problems: globs that match nothing, STAC items without a local
        raster asset, and scenes whose id repeats an earlier one (two sources must not write
        the same store).
    """
    scenes: list[SceneSource] = []
    problems: list[SourceProblem] = []
    for source in sources:
        path = Path(source)
        if GLOB_CHARS & set(source):
            matches = sorted(glob.glob(source, recursive=True))
            files = [
                m
                for m in matches
                if Path(m).is_file() and Path(m).suffix.lower() in RASTER_SUFFIXES
            ]
            if not files:
                problems.append(
                    SourceProblem(source=source, error="the pattern matches no raster file")
                )
            scenes.extend(SceneSource(source=m) for m in files)
        elif _is_stac_json(path):
            found, stac_problems = _expand_stac(path)
            scenes.extend(found)
            problems.extend(stac_problems)
        elif path.is_dir():
            files = [str(p) for p in expand_sources([path])]
            if not files:
                problems.append(
                    SourceProblem(source=source, error="the folder holds no raster file")
                )
            scenes.extend(SceneSource(source=f) for f in files)
        else:  # a file, or a missing path: the task reports it with the library's own error
            scenes.append(SceneSource(source=source))
    unique: list[SceneSource] = []
    seen: dict[str, str] = {}
    for scene in scenes:
        first = seen.get(scene.resolved_id)
        if first is None:
            seen[scene.resolved_id] = scene.source
            unique.append(scene)
        elif first != scene.source:
            problems.append(
                SourceProblem(
                    source=scene.source,
                    error=f"scene id {scene.resolved_id!r} is already used by {first}; "
                    "rename one of the files or ingest it separately with its own scene id",
                )
            )
    return unique, problems


def _summary_markdown(store: str, rows: list[dict[str, Any]]) -> str:
    counts = {
        status: sum(1 for r in rows if r["status"] == status)
        for status in ("ingested", "skipped", "failed")
    }
    lines = [
        "# Scene ingest",
        "",
        f"Store folder: `{store}`",
        "",
        f"- ingested: {counts['ingested']}",
        f"- skipped (already complete): {counts['skipped']}",
        f"- failed: {counts['failed']}",
    ]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failures", "", "| scene | source | error |", "|---|---|---|"]
        for row in failed:
            error = str(row["error"]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {row['scene_id']} | `{row['source']}` | {error} |")
    return "\n".join(lines) + "\n"


@flow(
    name="ingest-scenes",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENT_SCENES),  # type: ignore[arg-type]  # Prefect's generic runner typing
)
def ingest_scenes(
    sources: list[str],
    store: str,
    config: dict[str, Any] | None = None,
    overwrite: bool = False,
    dask_address: str | None = None,
) -> list[dict[str, Any]]:
    """Ingest every scene the sources name into ``store``; report each scene's outcome.

    Args:
        sources: raster paths, folders, globs and/or STAC Item(Collection) JSON files.
        store: local folder of Zarr stores (``<scene_id>.zarr`` and ``<scene_id>.stac.json``).
        config: :class:`lrs_core.ingest.IngestConfig` fields as JSON values.
        overwrite: rebuild stores that already exist.
        dask_address: ``tcp://host:port`` of a Dask scheduler for the block work; None: local.

    Returns:
        One row per scene or source problem: ``scene_id``, ``source``, ``store``, ``status``
        (``ingested``, ``skipped`` or ``failed``), ``error``, ``level_shapes``. The same rows are
        published as the table artifact ``ingest-scenes``, with a markdown summary
        ``ingest-summary`` listing the failures.
    """
    logger = get_run_logger()
    scenes, problems = expand_scene_sources(sources)
    logger.info(
        "ingesting %d scenes into %s (%d source problems)", len(scenes), store, len(problems)
    )
    submitted: list[tuple[SceneSource, PrefectFuture[dict[str, Any]]]] = [
        (
            scene,
            ingest_scene_task.submit(
                scene.source,
                store,
                scene_id=scene.scene_id,
                config=config,
                overwrite=overwrite,
                dask_address=dask_address,
            ),
        )
        for scene in scenes
    ]
    rows: list[dict[str, Any]] = []
    for scene, future in submitted:
        future.wait()
        outcome = future.result(raise_on_failure=False)
        if future.state.is_completed():
            rows.append(dict(outcome))
            continue
        error = " ".join(str(outcome).split()) or type(outcome).__name__
        logger.warning("ingest of %s failed: %s", scene.source, error)
        rows.append(_failed_row(scene.resolved_id, scene.source, error))
    for problem in problems:
        logger.warning("skipped source %s: %s", problem.source, problem.error)
        rows.append(_failed_row(Path(problem.source).stem, problem.source, problem.error))
    create_table_artifact(
        table=[_table_row(row) for row in rows],
        key=TABLE_ARTIFACT_KEY,
        description=f"Scenes ingested into {store}",
    )
    create_markdown_artifact(
        markdown=_summary_markdown(store, rows),
        key=SUMMARY_ARTIFACT_KEY,
        description="Ingest summary and failures",
    )
    return rows


def _failed_row(scene_id: str, source: str, error: str) -> dict[str, Any]:
    return {
        "scene_id": scene_id,
        "source": source,
        "store": None,
        "status": "failed",
        "error": error,
        "level_shapes": [],
        "stac_item": None,
    }


def _table_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row of the table artifact (level shapes as text, so the UI shows one cell)."""
    shapes = row.get("level_shapes") or []
    return {
        "scene_id": row["scene_id"],
        "status": row["status"],
        "source": row["source"],
        "store": row.get("store"),
        "levels": len(shapes),
        "size_hw": "x".join(str(v) for v in shapes[0]) if shapes else "",
        "error": row.get("error") or "",
    }


if __name__ == "__main__":
    import sys

    ingest_scenes(sources=sys.argv[2:], store=sys.argv[1])
