"""Prefect task around :func:`lrs_core.ingest.ingest_scene`: one scene into one Zarr store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lrs_core.errors import ConfigError
from lrs_core.raster.ingest import IngestConfig, ingest_scene
from tasks._retry import retry_condition_fn
from tasks.artifacts import progress_reporter

#: Attempts after the first one for a transient failure (bad input is never retried).
INGEST_RETRIES = 3
#: Seconds to wait before each retry.
INGEST_RETRY_DELAYS_S: list[float] = [5.0, 30.0, 120.0]
#: Seconds between two updates of a scene's progress artifact.
PROGRESS_INTERVAL_S = 2.0
#: Tags of every ingest task run (a concurrency limit on ``lrs-ingest`` caps parallel ingests).
INGEST_TAGS = ["lrs", "lrs-ingest"]


def ingest_config_from(params: dict[str, Any] | None) -> IngestConfig:
    """Build an :class:`IngestConfig` from a flow/deployment parameter dict (JSON values).

    Args:
        params: field name → value; None or ``{}`` gives the defaults. ``bands`` may be a list.

    Returns:
        The validated config.

    Raises:
        ConfigError: an unknown field, or a value outside its range.
    """
    values = dict(params or {})
    if values.get("bands") is not None:
        values["bands"] = tuple(values["bands"])
    try:
        return IngestConfig(**values)
    except TypeError as err:
        known = sorted(IngestConfig.__dataclass_fields__)
        raise ConfigError(
            f"ingest config {sorted(values)} has an unknown field ({err}); known: {known}"
        ) from err


def _progress_reporter(scene_label: str) -> Callable[[int, int], None] | None:
    """Return a throttled callback feeding a Prefect progress artifact; None outside a task run."""
    return progress_reporter(
        f"ingest of {scene_label}", interval_s=PROGRESS_INTERVAL_S, task_run_only=True
    )


@task(
    name="ingest-scene",
    task_run_name="ingest-{source}",
    retries=INGEST_RETRIES,
    retry_delay_seconds=INGEST_RETRY_DELAYS_S,
    retry_condition_fn=retry_condition_fn,
    tags=INGEST_TAGS,
    cache_policy=NO_CACHE,  # idempotence comes from the store itself (a finished store is skipped)
)
def ingest_scene_task(
    source: str,
    store: str,
    scene_id: str | None = None,
    config: dict[str, Any] | None = None,
    overwrite: bool = False,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Ingest one scene into ``store/<scene_id>.zarr``; return a small JSON record.

    Args:
        source: local path of a GeoTIFF/COG/PNG/JPEG scene.
        store: folder of stores (created if missing).
        scene_id: store name; defaults to the file stem.
        config: :class:`IngestConfig` fields as JSON values (see :func:`ingest_config_from`).
        overwrite: replace an existing store under this id.
        dask_address: ``tcp://host:port`` of a Dask scheduler; None for local threads.

    Returns:
        :meth:`IngestResult.to_dict`: ``scene_id``, ``source``, ``store``, ``status``
        (``ingested`` or ``skipped``), ``level_shapes``, ``stac_item``.

    Raises:
        SceneNotFoundError, SceneReadError, StoreConflictError, ConfigError: bad input (not
            retried); other errors are retried when :func:`tasks._retry.is_transient_error` says so.
    """
    logger = get_run_logger()
    result = ingest_scene(
        source,
        store,
        scene_id=scene_id,
        config=ingest_config_from(config),
        overwrite=overwrite,
        dask_address=dask_address,
        progress=_progress_reporter(scene_id or source),
    )
    logger.info(
        "%s %s -> %s (levels %s)",
        result.status,
        result.source,
        result.store,
        [list(shape) for shape in result.level_shapes],
    )
    return result.to_dict()
