"""Content digests of a scene store, and the full check behind ``lrs verify``.

The ingest hashes every region it writes, in memory, as it writes it (no read-back): a region is
a chunk-aligned rectangle ``(top, left, height, width)`` of one level, and its digests are
blake2b-128 of its RGB pixels, uint8 ``(y, x, band)`` in C order, and of its validity mask as
uint8 0/1 ``(y, x)`` in C order. Each level's region list goes into that level group's
attributes (``<store>/<level>/zarr.json``, so the store holds nothing Zarr does not know)::

    "lrs.regions": [[top, left, h, w, rgb_hex, valid_hex], ...]

and the root attributes get, in ``lrs.digests``, one digest per level over that level's sorted
region lines (``top,left,h,w,<hex>`` and a newline each), written before ``lrs.complete``::

    {"algorithm": "blake2b-128", "regions_attr": "lrs.regions",
     "levels": [{"rgb": hex, "valid": hex}, ...]}

:func:`verify_store` checks that the regions tile each level exactly, recomputes every region's
digests from the stored pixels and the per-level digests from them, and checks that every level
is the 2x reduction of the one below (:func:`lrs_core.raster.pyramid.reduce_2x2`, the rule the
ingest writes with; ``docs/pyramid.md``) and that invalid pixels hold 0.
:func:`lrs_core.raster.pyramid.open_pyramid` only checks that ``lrs.digests`` is there (cheap).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors

from lrs_core.errors import SceneNotFoundError
from lrs_core.raster.pyramid import (
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
#: Attribute of each level group listing the digest of every region written to that level.
REGIONS_ATTR = "lrs.regions"
#: Rows of a level read at a time by the reduction check (even, so a strip reduces to whole rows).
STRIP_ROWS = 1024
#: Largest |difference| allowed between a stored level and the reduction of the level below.
#: The ingest writes exactly ``reduce_2x2`` (0 expected); 1 is the rounding of a 2x2 mean.
REDUCTION_TOLERANCE = 1

#: One written region: ``[top, left, height, width, rgb_hex, valid_hex]``.
Region = list[Any]


def region_digest(top: int, left: int, rgb: np.ndarray, valid: np.ndarray) -> Region:
    """Digest one region of a level as the ingest writes it.

    Args:
        top: first row of the region in its level.
        left: first column.
        rgb: uint8 (h, w, 3), 0 where invalid.
        valid: bool (h, w).

    Returns:
        ``[top, left, h, w, rgb_hex, valid_hex]``.
    """
    rgb_hash = hashlib.blake2b(np.ascontiguousarray(rgb).data, digest_size=DIGEST_BYTES)
    valid_hash = hashlib.blake2b(
        np.ascontiguousarray(valid).view(np.uint8).data, digest_size=DIGEST_BYTES
    )
    height, width = valid.shape
    return [top, left, height, width, rgb_hash.hexdigest(), valid_hash.hexdigest()]


def combine_regions(regions: Sequence[Region]) -> dict[str, str]:
    """The per-level ``{"rgb", "valid"}`` digests over a level's regions (order-independent)."""
    rgb_hash = hashlib.blake2b(digest_size=DIGEST_BYTES)
    valid_hash = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for top, left, height, width, rgb_hex, valid_hex in sorted(regions):
        place = f"{top},{left},{height},{width},"
        rgb_hash.update(f"{place}{rgb_hex}\n".encode())
        valid_hash.update(f"{place}{valid_hex}\n".encode())
    return {"rgb": rgb_hash.hexdigest(), "valid": valid_hash.hexdigest()}


def write_region_digests(store: Path, regions_by_level: Sequence[Sequence[Region]]) -> None:
    """Write each level's sorted region list into its group's attributes, durably.

    Each level's ``zarr.json`` is fsynced, so once the completion flag (written after this) is on
    disk, so are the region lists.
    """
    root = zarr.open_group(str(store), mode="r+")
    for store_level, regions in enumerate(regions_by_level):
        level_group = root[str(store_level)]
        assert isinstance(level_group, zarr.Group)
        level_group.attrs[REGIONS_ATTR] = sorted(list(r) for r in regions)
        metadata = store / str(store_level) / "zarr.json"
        with metadata.open("rb") as handle:
            os.fsync(handle.fileno())


def digests_attribute(regions_by_level: Sequence[Sequence[Region]]) -> dict[str, Any]:
    """The ``lrs.digests`` root attribute: one combined digest pair per level."""
    return {
        "algorithm": DIGEST_ALGORITHM,
        "regions_attr": REGIONS_ATTR,
        "levels": [combine_regions(regions) for regions in regions_by_level],
    }


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


def _read_regions(group: zarr.Group, n_levels: int) -> tuple[list[list[Region]] | None, str | None]:
    """The region lists of every level's ``lrs.regions``, or None and why they cannot be used."""
    levels: list[list[Region]] = []
    for store_level in range(n_levels):
        try:
            level_group = group[str(store_level)]
            regions = level_group.attrs[REGIONS_ATTR]
        except KeyError:
            return None, f"level {store_level}: {REGIONS_ATTR} is missing"
        if not isinstance(regions, list):
            return None, f"level {store_level}: {REGIONS_ATTR} is not a list of regions"
        levels.append(regions)
    return levels, None


def _coverage_problem(
    regions: Sequence[Region], shape_hw: tuple[int, int], chunk_hw: tuple[int, int]
) -> str | None:
    """Why ``regions`` do not tile a level exactly once, or None when they do.

    Regions start on chunk edges and end on one or at the level's edge, so coverage is counted
    per chunk (memory: one byte per chunk, not per pixel).
    """
    height, width = shape_hw
    chunk_h, chunk_w = chunk_hw
    covered = np.zeros((-(-height // chunk_h), -(-width // chunk_w)), dtype=np.int32)
    for top, left, region_h, region_w, *_ in regions:
        bottom, right = top + region_h, left + region_w
        inside = 0 <= top < bottom <= height and 0 <= left < right <= width
        aligned = (
            top % chunk_h == 0
            and left % chunk_w == 0
            and (bottom == height or bottom % chunk_h == 0)
            and (right == width or right % chunk_w == 0)
        )
        if not (inside and aligned):
            return f"region {top},{left},{region_h},{region_w} is outside the level or unaligned"
        covered[top // chunk_h : -(-bottom // chunk_h), left // chunk_w : -(-right // chunk_w)] += 1
    if covered.min() != 1 or covered.max() != 1:
        return "the written regions do not cover the level exactly once"
    return None


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

    Each written region is read back and hashed; each level is then read in row strips of
    :data:`STRIP_ROWS`, reduced with :func:`reduce_2x2` and compared with the next level.

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
    regions_by_level: list[list[Region]] | None = None
    if missing is None:
        regions_by_level, missing = _read_regions(group, n_levels)
    if missing is not None:
        problems.append(f"cannot check content: {missing}")
    stored = [] if regions_by_level is None else lrs[DIGESTS_ATTR]["levels"]
    checks: list[LevelCheck] = []
    for store_level in range(n_levels):
        rgb, valid = _arrays(group, store_level)
        shape_hw = (int(valid.shape[0]), int(valid.shape[1]))
        digest_ok = False
        if regions_by_level is not None:
            regions = regions_by_level[store_level]
            chunk_hw = (int(valid.chunks[0]), int(valid.chunks[1]))
            coverage = _coverage_problem(regions, shape_hw, chunk_hw)
            recomputed = [
                region_digest(
                    top,
                    left,
                    np.asarray(rgb[top : top + height, left : left + width]),
                    np.asarray(valid[top : top + height, left : left + width]),
                )
                for top, left, height, width, *_ in regions
            ]
            changed = sum(
                1 for got, want in zip(recomputed, regions, strict=True) if list(want) != got
            )
            digest_ok = (
                coverage is None and not changed and combine_regions(regions) == stored[store_level]
            )
            if coverage is not None:
                problems.append(f"level {store_level}: {coverage}")
            if changed:
                problems.append(
                    f"level {store_level}: {changed} of {len(regions)} written regions differ "
                    "from their digests (changed after ingest)"
                )
            elif combine_regions(regions) != stored[store_level]:
                problems.append(f"level {store_level}: {REGIONS_ATTR} does not match lrs.digests")
        checks.append(
            LevelCheck(
                store_level=store_level,
                shape_hw=shape_hw,
                digest_ok=digest_ok,
                reduction_max_diff=None,
                reduction_mask_mismatches=None,
                invalid_nonzero=0,
            )
        )
    for store_level in range(n_levels):
        rgb, valid = _arrays(group, store_level)
        has_next = store_level + 1 < n_levels
        next_rgb, next_valid = _arrays(group, store_level + 1) if has_next else (None, None)
        invalid_nonzero = 0
        level_max: int | None = None
        level_mismatches = 0
        for top in range(0, int(valid.shape[0]), STRIP_ROWS):
            rgb_strip = np.asarray(rgb[top : top + STRIP_ROWS])
            valid_strip = np.asarray(valid[top : top + STRIP_ROWS])
            invalid_nonzero += int(np.count_nonzero(rgb_strip[~valid_strip].any(axis=-1)))
            if next_rgb is None or next_valid is None:
                continue
            want_rgb, want_valid = reduce_2x2(rgb_strip, valid_strip)
            row0 = top // LEVEL_FACTOR
            got_rgb = np.asarray(next_rgb[row0 : row0 + want_rgb.shape[0]])
            got_valid = np.asarray(next_valid[row0 : row0 + want_valid.shape[0]])
            diff = int(np.abs(got_rgb.astype(np.int16) - want_rgb.astype(np.int16)).max())
            level_max = diff if level_max is None else max(level_max, diff)
            level_mismatches += int(np.count_nonzero(got_valid != want_valid))
        if invalid_nonzero:
            problems.append(f"level {store_level}: {invalid_nonzero} invalid pixels are not 0")
        checks[store_level] = replace(checks[store_level], invalid_nonzero=invalid_nonzero)
        if has_next:
            checks[store_level + 1] = replace(
                checks[store_level + 1],
                reduction_max_diff=level_max,
                reduction_mask_mismatches=level_mismatches,
            )
            if (level_max or 0) > REDUCTION_TOLERANCE or level_mismatches:
                problems.append(
                    f"level {store_level + 1}: not the 2x reduction of level {store_level} "
                    f"(RGB differs by up to {level_max}, {level_mismatches} mask pixels differ)"
                )
    return VerifyReport(
        store=str(store), ok=not problems, problems=tuple(problems), levels=tuple(checks)
    )
