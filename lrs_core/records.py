"""The answer record: what one question about one scene produced, and where the model looked.

Coordinates: every ``bbox_px`` is ``(x0, y0, x1, y1)`` in level-0 pixels of the scene (column
first), corners, with (0, 0) the top-left corner of the top-left pixel (see
:mod:`lrs_core.raster.scene`). Map geometry (scene CRS, EPSG:4326) is derived from these with the
scene's affine in :mod:`lrs_core.outputs.geometry`, so a record stays valid for scenes with no
georeference.

Records are frozen and round-trip through JSON (:meth:`AnswerRecord.to_dict` /
:meth:`AnswerRecord.from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

BBoxPx = tuple[float, float, float, float]


@dataclass(frozen=True, kw_only=True)
class TileEvidence:
    """One DIP tile the engine encoded (or selected) for a question.

    Attributes:
        dip_level: DIP level, counted coarse to fine from 1 (0 is the thumbnail).
        tile_rc: (row, col) of the tile in that level's tile grid.
        bbox_px: (x0, y0, x1, y1) level-0 pixel corners of the tile's in-scene area.
        score: attention mass the RFM gave the tokens that selected this tile (0 when not scored).
        is_final: True for tiles of the last level the engine reached (the evidence proper).
    """

    dip_level: int
    tile_rc: tuple[int, int]
    bbox_px: BBoxPx
    score: float = 0.0
    is_final: bool = False


@dataclass(frozen=True, kw_only=True)
class TokenEvidence:
    """One vision token kept for the LLM, with its RFM score.

    Attributes:
        dip_level: DIP level of the token (0 is the thumbnail).
        grid_rc: (row, col) of the token in that level's unpadded token grid (newline excluded).
        bbox_px: (x0, y0, x1, y1) level-0 pixel corners of the token's footprint.
        score: RFM attention probability of the token at its level (0..1).
    """

    dip_level: int
    grid_rc: tuple[int, int]
    bbox_px: BBoxPx
    score: float


@dataclass(frozen=True, kw_only=True)
class FlopCount:
    """Analytic floating-point operations (one multiply-add = 2 FLOPs)."""

    vision_flops: float = 0.0
    llm_flops: float = 0.0
    rfm_flops: float = 0.0

    @property
    def total_flops(self) -> float:
        """Vision tower + projector, RFM and LLM FLOPs together."""
        return self.vision_flops + self.llm_flops + self.rfm_flops


@dataclass(frozen=True, kw_only=True)
class Accounting:
    """What answering one question cost.

    Attributes:
        vision_tiles_encoded: vision-tower tile passes run for this question (cache hits excluded).
        vision_tiles_cached: tiles whose features came from the feature cache.
        tokens_per_level: vision tokens produced per DIP level (index 0 = thumbnail).
        vision_tokens_to_llm: vision tokens in the LLM prefill (thumbnail and separator included).
        llm_text_tokens: text tokens in the LLM prefill.
        llm_prefill_tokens: vision + text tokens in the LLM prefill.
        decode_steps: generated tokens.
        flops: analytic FLOP count of this question.
        seconds: wall time per stage (``read``, ``vision``, ``rfm``, ``llm``, ``total``).
        peak_memory_bytes: peak resident (CPU) or allocated (CUDA) memory during the question.
        planned: True when the figures come from a dry run (nothing was executed).
    """

    vision_tiles_encoded: int = 0
    vision_tiles_cached: int = 0
    tokens_per_level: tuple[int, ...] = ()
    vision_tokens_to_llm: int = 0
    llm_text_tokens: int = 0
    llm_prefill_tokens: int = 0
    decode_steps: int = 0
    flops: FlopCount = field(default_factory=FlopCount)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int = 0
    planned: bool = False


@dataclass(frozen=True, kw_only=True)
class HeatMap:
    """RFM attention over the whole scene on a coarse raster.

    Attributes:
        values: row-major float32 values, ``shape_hw[0] * shape_hw[1]`` of them, in [0, 1]; cell
            (r, c) covers level-0 pixels ``[c*W/w, (c+1)*W/w) x [r*H/h, (r+1)*H/h)``.
        shape_hw: (rows, cols) of the raster.
    """

    values: tuple[float, ...]
    shape_hw: tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class SceneRef:
    """The scene a record refers to, with enough georeference to place its pixels on a map.

    Attributes:
        scene_id: id of the scene (the store name without ``.zarr``).
        store: path or URL of the scene's Zarr store.
        size_wh: (width, height) of level 0 in pixels.
        crs_wkt: WKT2 of the scene CRS, or None for a scene with no georeference.
        transform: level-0 affine as GDAL-ordered 6 numbers ``(a, b, c, d, e, f)`` of
            ``x = a*col + b*row + c``, ``y = d*col + e*row + f``; None without georeference.
    """

    scene_id: str
    store: str
    size_wh: tuple[int, int]
    crs_wkt: str | None = None
    transform: tuple[float, float, float, float, float, float] | None = None

    @property
    def is_georeferenced(self) -> bool:
        """Whether the scene has a CRS and an affine transform."""
        return self.crs_wkt is not None and self.transform is not None


@dataclass(frozen=True, kw_only=True)
class AnswerRecord:
    """One answered question, with its evidence and accounting."""

    question_id: str
    scene: SceneRef
    question: str
    answer: str
    model_id: str
    preset: str
    preset_params: dict[str, Any] = field(default_factory=dict)
    evidence_tiles: tuple[TileEvidence, ...] = ()
    evidence_tokens: tuple[TokenEvidence, ...] = ()
    heatmap: HeatMap | None = None
    accounting: Accounting = field(default_factory=Accounting)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (tuples become lists; ``total_flops`` is included)."""
        data = dataclasses.asdict(self)
        data["accounting"]["flops"]["total_flops"] = self.accounting.flops.total_flops
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerRecord:
        """Rebuild a record written by :meth:`to_dict`."""
        acc = dict(data.get("accounting") or {})
        flops = dict(acc.pop("flops", {}) or {})
        flops.pop("total_flops", None)
        accounting = Accounting(
            **{
                **acc,
                "tokens_per_level": tuple(acc.get("tokens_per_level", ())),
                "flops": FlopCount(**flops),
            }
        )
        heat = data.get("heatmap")
        scene = dict(data["scene"])
        scene["size_wh"] = tuple(scene["size_wh"])
        if scene.get("transform") is not None:
            scene["transform"] = tuple(scene["transform"])
        return cls(
            question_id=data["question_id"],
            scene=SceneRef(**scene),
            question=data["question"],
            answer=data["answer"],
            model_id=data["model_id"],
            preset=data["preset"],
            preset_params=dict(data.get("preset_params") or {}),
            evidence_tiles=tuple(
                TileEvidence(
                    **{**t, "tile_rc": tuple(t["tile_rc"]), "bbox_px": tuple(t["bbox_px"])}
                )
                for t in data.get("evidence_tiles", ())
            ),
            evidence_tokens=tuple(
                TokenEvidence(
                    **{**t, "grid_rc": tuple(t["grid_rc"]), "bbox_px": tuple(t["bbox_px"])}
                )
                for t in data.get("evidence_tokens", ())
            ),
            heatmap=None
            if heat is None
            else HeatMap(values=tuple(heat["values"]), shape_hw=tuple(heat["shape_hw"])),
            accounting=accounting,
            error=data.get("error"),
        )
