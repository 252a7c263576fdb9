"""Turn the scene of a request into a scene store: a store path, a scene id, or a raster to ingest.

A request names its scene as a store (``stores/a.zarr``), a scene id looked up in the stores
folder (``a`` for ``stores/a.zarr``), or a raster file (``a.tif``), which is ingested into the
stores folder first (:func:`lrs_core.raster.ingest.ingest_scene`; a finished store is reused).

With a data root, scene paths are confined to it: relative paths are read from it, and a path
that resolves (symbolic links followed) outside both the data root and the stores folder is
refused for its requests. Without one, paths are not confined.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lrs_core.errors import LrsError
from lrs_core.raster.ingest import RASTER_SUFFIXES, ingest_scene

log = logging.getLogger(__name__)

STORE_SUFFIX = ".zarr"

#: Ingest rasters into a stores folder: ``(raster paths, stores folder) -> {raster: store path
#: or the error that stopped its ingest}``. :func:`ingest_rasters` is the library's, run one by
#: one; the answer flow passes one that runs its ingest tasks concurrently.
IngestRasters = Callable[[Sequence[str], str], Mapping[str, "str | BaseException"]]


@dataclass(frozen=True, kw_only=True)
class ResolvedScene:
    """Where a request's scene is.

    Attributes:
        kind: ``store`` (a Zarr store to open) or ``raster`` (a file to ingest first).
        path: the store folder or the raster file.
    """

    kind: Literal["store", "raster"]
    path: str


@dataclass(frozen=True, kw_only=True)
class SceneStores:
    """The store of each scene of a batch, or why it has none.

    Attributes:
        stores: scene (as requested) -> its store path.
        errors: scene (as requested) -> one line saying why it cannot be answered.
    """

    stores: dict[str, str]
    errors: dict[str, str]


def scene_id_of_store(store: str | Path) -> str:
    """Return the scene id of a store path (its folder name without ``.zarr``)."""
    return Path(store).name.removesuffix(STORE_SUFFIX)


def _confined(path: Path, *, allowed: tuple[Path, ...], scene: str) -> str | None:
    """Return an error when ``path`` resolves outside every ``allowed`` root, else None."""
    resolved = path.resolve()
    if any(resolved.is_relative_to(root) for root in allowed):
        return None
    return (
        f"scene {scene!r} resolves to {resolved}, outside the data root {allowed[0]}; refused "
        "(put the scene under the data root, or run with a data root that holds it)"
    )


def resolve_scene(
    scene: str, *, stores: str | Path, data_root: Path | None = None
) -> ResolvedScene | str:
    """Return where ``scene`` is, or an error message (never raised: it fails only its requests).

    Args:
        scene: the request's scene: a store path, a scene id in ``stores``, or a raster path.
        stores: the folder of scene stores.
        data_root: the folder scene paths are confined to (resolved); None leaves them free.

    Returns:
        A :class:`ResolvedScene`, or one line saying why the scene cannot be used.
    """
    path = Path(scene)
    allowed: tuple[Path, ...] = ()
    if data_root is not None:
        allowed = (data_root, Path(stores).resolve())
        if not path.is_absolute():
            path = data_root / path
    in_stores = Path(stores) / f"{scene}{STORE_SUFFIX}"
    if path.suffix == STORE_SUFFIX or path.is_dir():
        if allowed and (escape := _confined(path, allowed=allowed, scene=scene)) is not None:
            return escape
        if path.is_dir():
            return ResolvedScene(kind="store", path=str(path))
        return f"scene store {scene} does not exist; ingest the scene first or fix the path"
    if in_stores.is_dir():
        if allowed and (escape := _confined(in_stores, allowed=allowed, scene=scene)) is not None:
            return escape
        return ResolvedScene(kind="store", path=str(in_stores))
    if path.suffix.lower() in RASTER_SUFFIXES:
        if allowed and (escape := _confined(path, allowed=allowed, scene=scene)) is not None:
            return escape
        return ResolvedScene(kind="raster", path=str(path))  # a missing file fails its ingest
    return (
        f"scene {scene!r} is neither a store path, nor a scene id in {stores} (no {in_stores}), "
        f"nor a raster file ({', '.join(sorted(RASTER_SUFFIXES))}); ingest it first or give "
        "its path"
    )


def ingest_rasters(rasters: Sequence[str], stores: str) -> dict[str, str | BaseException]:
    """Ingest rasters one by one into ``stores`` (finished stores are reused, not rewritten).

    Returns:
        raster -> its store path, or the :class:`LrsError` / ``OSError`` that stopped its ingest
        (other errors propagate).
    """
    done: dict[str, str | BaseException] = {}
    for raster in rasters:
        try:
            result = ingest_scene(raster, stores, wait=True)  # queue behind a run ingesting it
        except (LrsError, OSError) as err:
            log.warning("ingest of %s failed: %s", raster, err)
            done[raster] = err
            continue
        done[raster] = str(result.store)
    return done


def resolve_scenes(
    scenes: Sequence[str],
    *,
    stores: str,
    data_root: Path | None = None,
    ingest: IngestRasters = ingest_rasters,
) -> SceneStores:
    """Find the store of every scene, ingesting the raster scenes first.

    Rasters are ingested before the other scenes are resolved, so that a request naming a scene
    by the id of a raster ingested in the same batch finds its new store.

    Args:
        scenes: the scenes as the requests give them (each once).
        stores: the folder of scene stores (rasters are ingested into it).
        data_root: see :func:`resolve_scene`.
        ingest: how rasters are ingested (:data:`IngestRasters`).

    Returns:
        The store of each usable scene and the error of each other one.
    """
    found: dict[str, str] = {}
    errors: dict[str, str] = {}
    rasters: dict[str, str] = {}
    for scene in scenes:
        resolved = resolve_scene(scene, stores=stores, data_root=data_root)
        if isinstance(resolved, ResolvedScene) and resolved.kind == "raster":
            rasters[scene] = resolved.path
    if rasters:
        outcomes = ingest(list(dict.fromkeys(rasters.values())), stores)
        for scene, raster in rasters.items():
            outcome = outcomes.get(raster)
            if isinstance(outcome, str):
                found[scene] = outcome
            else:
                errors[scene] = f"ingest of {scene} failed: " + " ".join(str(outcome).split())
    for scene in scenes:
        if scene in rasters:
            continue
        resolved = resolve_scene(scene, stores=stores, data_root=data_root)
        if isinstance(resolved, str):
            errors[scene] = resolved
        else:
            found[scene] = resolved.path
    return SceneStores(stores=found, errors=errors)
