"""Content digests of a scene store, and the full check behind ``lrs verify``.

A store's root carries, in ``lrs.digests``, one pair of digests per store level, written by the
ingest after every level and before ``lrs.complete``::

    {"algorithm": "blake2b-128", "levels": [{"rgb": "<hex>", "valid": "<hex>"}, ...]}

``rgb`` hashes the level's decoded RGB array, uint8 ``(y, x, band)`` in C order; ``valid`` hashes
its validity mask as uint8 0/1 ``(y, x)`` in C order. They cover the *decoded* pixels, so they do
not depend on chunking or compression, and are read in row strips (memory bounded by a strip).

:func:`verify_store` recomputes them, and checks that every level is the 2x reduction of the one
below (:func:`lrs_core.pyramid.reduce_2x2`, the rule the ingest writes with; ``docs/pyramid.md``)
and that invalid pixels hold 0. :func:`lrs_core.pyramid.open_pyramid` only checks that the
digests are there (cheap); ``lrs verify`` is the full check.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors

from lrs_core.errors import SceneNotFoundError
from lrs_core.pyramid import (
    DIGESTS_ATTR,
    LEVEL_FACTOR,
    LRS_ATTR,
    digest_problem,
    reduce_2x2,
    rgb_path,
    valid_path,
)

#: Hash of the content digests (and its digest size in bytes).
DIGEST_ALGORITHM = "blake2b-128"
DIGEST_BYTES = 16
#: Rows of a level read at a time (an even number, so a strip reduces to whole rows).
STRIP_ROWS = 1024
#: Largest |difference| allowed between a stored level and the reduction of the level below.
#: The ingest writes exactly ``reduce_2x2`` (0 expected); 1 is the rounding of a 2x2 mean.
REDUCTION_TOLERANCE = 1


def _open_levels(store: str | Path) -> tuple[zarr.Group, dict[str, Any], int]:
    """Open a store's root group; return it, its attributes and its number of levels."""
    try:
        group = zarr.open_group(str(store), mode="r")
    except (
        FileNotFoundError,
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
    ) as err:
        raise SceneNotFoundError(f"{store}: no Zarr store here; check the path") from err
    attributes: dict[str, Any] = dict(group.attrs)
    if not isinstance(attributes.get(LRS_ATTR), dict):
        raise SceneNotFoundError(f"{store}: a Zarr group but not an lrs scene store")
    n_levels = len(attributes.get("multiscales", {}).get("layout", []))
    return group, attributes, n_levels


def _arrays(group: zarr.Group, store_level: int) -> tuple[zarr.Array[Any], zarr.Array[Any]]:
    rgb = group[rgb_path(store_level)]
    valid = group[valid_path(store_level)]
    assert isinstance(rgb, zarr.Array) and isinstance(valid, zarr.Array)
    return rgb, valid


def compute_digests(store: str | Path) -> dict[str, Any]:
    """Compute the ``lrs.digests`` object of a store from its arrays (see the module docstring).

    Args:
        store: path of a ``<scene_id>.zarr`` store, finished or not.

    Returns:
        ``{"algorithm": "blake2b-128", "levels": [{"rgb": hex, "valid": hex}, ...]}``.
    """
    group, _, n_levels = _open_levels(store)
    levels = []
    for store_level in range(n_levels):
        rgb, valid = _arrays(group, store_level)
        rgb_hash = hashlib.blake2b(digest_size=DIGEST_BYTES)
        valid_hash = hashlib.blake2b(digest_size=DIGEST_BYTES)
        for top in range(0, int(valid.shape[0]), STRIP_ROWS):
            rgb_hash.update(np.ascontiguousarray(rgb[top : top + STRIP_ROWS]).tobytes())
            valid_hash.update(
                np.ascontiguousarray(valid[top : top + STRIP_ROWS]).astype(np.uint8).tobytes()
            )
        levels.append({"rgb": rgb_hash.hexdigest(), "valid": valid_hash.hexdigest()})
    return {"algorithm": DIGEST_ALGORITHM, "levels": levels}


@dataclass(frozen=True, kw_only=True)
class LevelCheck:
    """What :func:`verify_store` found on one store level.

    Attributes:
        store_level: the level (0: full resolution).
        shape_hw: (height, width) in pixels.
        digest_ok: the recomputed digests equal the stored ones (False when none are stored).
        reduction_max_diff: largest |stored - reduce_2x2(level below)| over RGB; None for level 0.
        reduction_mask_mismatches: pixels whose validity differs from the reduction's; None for
            level 0.
        invalid_nonzero: invalid pixels whose RGB is not 0 (the layout says 0).
    """

    store_level: int
    shape_hw: tuple[int, int]
    digest_ok: bool
    reduction_max_diff: int | None
    reduction_mask_mismatches: int | None
    invalid_nonzero: int


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    """The outcome of :func:`verify_store`.

    Attributes:
        store: the store checked.
        ok: True when every check passed.
        problems: one line per failed check (empty when ok).
        levels: the per-level findings.
    """

    store: str
    ok: bool
    problems: tuple[str, ...]
    levels: tuple[LevelCheck, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = asdict(self)
        data["problems"] = list(self.problems)
        data["levels"] = [
            {**asdict(level), "shape_hw": list(level.shape_hw)} for level in self.levels
        ]
        return data


def verify_store(store: str | Path) -> VerifyReport:
    """Recompute a store's digests and check each level against the one below.

    Each level is read once in row strips of :data:`STRIP_ROWS`; the strip is hashed, reduced
    with :func:`reduce_2x2` and compared with the matching rows of the next level.

    Args:
        store: path of a ``<scene_id>.zarr`` store.

    Returns:
        The :class:`VerifyReport`; ``ok`` is False when the store is unfinished, has no digests,
        a digest differs, a level is not the reduction of the one below (beyond
        :data:`REDUCTION_TOLERANCE`), or an invalid pixel is not 0.

    Raises:
        SceneNotFoundError: nothing is there, or it is not an lrs store.
    """
    group, attributes, n_levels = _open_levels(store)
    lrs = attributes[LRS_ATTR]
    problems: list[str] = []
    if not lrs.get("complete", False):
        problems.append("the ingest did not finish (lrs.complete is not true)")
    missing = digest_problem(attributes)
    if missing is not None:
        problems.append(f"cannot check content: {missing}")
    stored = [] if missing is not None else lrs[DIGESTS_ATTR]["levels"]
    checks: list[LevelCheck] = []
    max_diff: list[int | None] = [None] * n_levels
    mismatches: list[int | None] = [None] * n_levels
    for store_level in range(n_levels):
        rgb, valid = _arrays(group, store_level)
        height, width = int(valid.shape[0]), int(valid.shape[1])
        rgb_hash = hashlib.blake2b(digest_size=DIGEST_BYTES)
        valid_hash = hashlib.blake2b(digest_size=DIGEST_BYTES)
        invalid_nonzero = 0
        has_next = store_level + 1 < n_levels
        next_rgb, next_valid = _arrays(group, store_level + 1) if has_next else (None, None)
        for top in range(0, height, STRIP_ROWS):
            rgb_strip = np.ascontiguousarray(rgb[top : top + STRIP_ROWS])
            valid_strip = np.ascontiguousarray(valid[top : top + STRIP_ROWS])
            rgb_hash.update(rgb_strip.tobytes())
            valid_hash.update(valid_strip.astype(np.uint8).tobytes())
            invalid_nonzero += int(np.count_nonzero(rgb_strip[~valid_strip].any(axis=-1)))
            if next_rgb is None or next_valid is None:
                continue
            want_rgb, want_valid = reduce_2x2(rgb_strip, valid_strip)
            row0 = top // LEVEL_FACTOR
            got_rgb = np.asarray(next_rgb[row0 : row0 + want_rgb.shape[0]])
            got_valid = np.asarray(next_valid[row0 : row0 + want_valid.shape[0]])
            diff = int(np.abs(got_rgb.astype(np.int16) - want_rgb.astype(np.int16)).max())
            bad_mask = int(np.count_nonzero(got_valid != want_valid))
            level_diff = max_diff[store_level + 1]
            max_diff[store_level + 1] = diff if level_diff is None else max(level_diff, diff)
            mismatches[store_level + 1] = (mismatches[store_level + 1] or 0) + bad_mask
        digest_ok = bool(stored) and stored[store_level] == {
            "rgb": rgb_hash.hexdigest(),
            "valid": valid_hash.hexdigest(),
        }
        if stored and not digest_ok:
            problems.append(
                f"level {store_level}: content differs from its digest (changed after ingest)"
            )
        if invalid_nonzero:
            problems.append(f"level {store_level}: {invalid_nonzero} invalid pixels are not 0")
        checks.append(
            LevelCheck(
                store_level=store_level,
                shape_hw=(height, width),
                digest_ok=digest_ok,
                reduction_max_diff=None,
                reduction_mask_mismatches=None,
                invalid_nonzero=invalid_nonzero,
            )
        )
    for store_level in range(1, n_levels):
        level_max, level_mismatches = max_diff[store_level], mismatches[store_level]
        checks[store_level] = replace(
            checks[store_level],
            reduction_max_diff=level_max,
            reduction_mask_mismatches=level_mismatches,
        )
        if (level_max or 0) > REDUCTION_TOLERANCE or level_mismatches:
            problems.append(
                f"level {store_level}: not the 2x reduction of level {store_level - 1} "
                f"(RGB differs by up to {level_max}, {level_mismatches} mask pixels differ)"
            )
    return VerifyReport(
        store=str(store), ok=not problems, problems=tuple(problems), levels=tuple(checks)
    )
