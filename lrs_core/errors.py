"""Errors and warnings of lrs.

Every error derives from :class:`LrsError` and also from the builtin it refines, so callers can
catch either (``except FileNotFoundError`` catches a missing scene). Messages say what failed,
with the values involved, and what to do next.
"""

from __future__ import annotations


class LrsError(Exception):
    """Root of every error raised by lrs."""


class ConfigError(LrsError, ValueError):
    """A configuration field has a value outside its allowed range."""


class SceneNotFoundError(LrsError, FileNotFoundError):
    """A scene file or store does not exist."""


class SceneReadError(LrsError, OSError):
    """A scene exists but cannot be decoded (corrupt, truncated, not a raster, absurd header)."""


class GeoreferenceError(LrsError, ValueError):
    """A scene's georeference is missing or inconsistent where one is required."""


class IncompletePyramidError(LrsError, RuntimeError):
    """A Zarr pyramid store was not finished (an interrupted ingest)."""


class StoreConflictError(LrsError, FileExistsError):
    """A store already exists for another source under the same scene id."""


class WeightsError(LrsError, OSError):
    """Model weights are missing, not safetensors, or do not match the architecture."""


class TokenBudgetError(LrsError, ValueError):
    """The text alone does not fit the model's context or the requested vision-token budget."""


class DatasetError(LrsError, ValueError):
    """A benchmark file or row is malformed, or a path escapes the data root."""


class GeometryError(LrsError, ValueError):
    """An image size, pixel box or grid index lies outside the geometry it refers to."""


class LrsWarning(UserWarning):
    """Root of every warning issued by lrs (tests turn these into errors)."""


class NotGeoreferencedWarning(LrsWarning):
    """A scene has no CRS/transform; its footprints are in pixel coordinates only."""


class LossyConversionWarning(LrsWarning):
    """A value was clipped, cast or truncated in a way the caller should know about."""


class WindowError(LrsError, ValueError):
    """A requested window or region is empty or lies outside a pyramid level."""


class OutputNotWritableError(LrsError, PermissionError):
    """An output folder cannot be created or written (permissions, read-only filesystem)."""


class StoreIntegrityError(LrsError, RuntimeError):
    """A finished store fails its integrity check (digests, or levels that are not reductions)."""


class NoLonLatFootprintWarning(LrsWarning):
    """A georeferenced scene's footprint does not reproject to EPSG:4326 (e.g. a full disk)."""
