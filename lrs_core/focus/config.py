"""The configuration of the coarse-to-fine engine and its named presets.

:class:`FocusConfig` is re-exported by :mod:`lrs_core.focus.engine`. Each ``parity`` value cites the
spec section (``reference/algorithm.md``) it reproduces; the ``default`` preset is the paper's full
loop with the fixes of spec §11.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args, overload

from lrs_core.errors import ConfigError

Strategy = Literal["focus", "thumbnail", "grid", "full", "fastv", "pdrop"]
PositionModeName = Literal["compact", "original"]

#: Preset names; ``grid-N`` takes any N >= 1 (``grid-3``, ``grid-6``).
PRESET_NAMES: tuple[str, ...] = (
    "default",
    "parity",
    "thumbnail",
    "grid-N",
    "full",
    "fastv",
    "pdrop",
)
#: What the reference adds to a masked placeholder key's logit in RFM pass 2: its additive mask
#: (``finfo.min`` where masked) cast to bool, i.e. 1.0 instead of -inf (spec §5.1 pass 2).
REFERENCE_PLACEHOLDER_LOGIT_BIAS = 1.0
#: The reference's hard-coded ratio ρ for selection and pruning (spec §5.1, §5.4).
REFERENCE_RATIO = 0.25
#: Our default cap on tiles per zoom step (spec §12 names the unused CLI hint 6; 12 keeps
#: the final level at <= 12 x 144 tokens before pruning).
DEFAULT_TILES_CAP = 12
#: Default grid side of the ``grid`` baseline (LLaVA-1.5-style 3 x 3 = 1008 px long side).
DEFAULT_GRID_N = 3
#: Default decode length; the reference allows 1024/4096 (spec §5.6), far more than short answers.
DEFAULT_MAX_NEW_TOKENS = 32
#: Kept tokens reported as evidence, most attended first.
DEFAULT_EVIDENCE_TOKENS = 64
#: Heat-map cells along the scene's long side.
DEFAULT_HEATMAP_CELLS = 64
#: Questions about one scene the LLM answers in one batched pass (``FocusEngine.answer_many``).
DEFAULT_QA_BATCH = 8
#: Tiles per vision-tower call.
DEFAULT_VISION_BATCH = 16
#: A tile whose share of nodata pixels is above this is never zoomed into nor reported as
#: evidence (lrs_core.focus.nodata); 1.0 disables the rule (the reference selects by attention).
DEFAULT_MAX_NODATA_SHARE = 0.95
_GRID_PRESET = re.compile(r"^grid-(\d+)$")

if TYPE_CHECKING:

    class _PresetAttribute:
        """Type-checking view of ``FocusConfig.preset``: a constructor, or a str on instances."""

        @overload
        def __get__(self, obj: None, owner: type) -> Callable[..., FocusConfig]: ...
        @overload
        def __get__(self, obj: object, owner: type) -> str: ...
        def __get__(self, obj: object, owner: type) -> Any: ...
        def __set__(self, obj: object, value: str) -> None: ...

    PresetField = _PresetAttribute
else:
    PresetField = str


@dataclass(frozen=True, kw_only=True)
class FocusConfig:
    """How the engine builds the LLM's view of a scene (see ``docs/method.md``).

    Attributes:
        preset: the preset name this config came from (recorded in every answer).
        strategy: ``focus`` (coarse-to-fine with the RFM) or a baseline view.
        pyramid_rule: DIP level rule, ``default`` or ``parity``
            (:class:`lrs_core.dip.plan.PyramidRule`).
        resampler: tile resampler, ``antialiased`` or ``parity`` (``tiles.Resampler``).
        select_ratio: share of the scored tokens whose tiles are zoomed into (spec §5.1).
        keep_ratio: share of the last level's tokens kept for the LLM (spec §5.4).
        max_zoom_steps: most zoom steps; None = down to the finest level.
        tiles_cap: most tiles per zoom step; None = every tile hit.
        neighbour_expansion: also zoom into tiles within this Chebyshev distance of a chosen one.
        include_newline_in_selection: newline tokens are RFM keys and take part in selection and in
            the keep ratio (parity, spec §5.2, §11.6).
        keep_all_newlines: every row's newline reaches the LLM, not only rows with kept tokens
            (parity, spec §5.4).
        reencode_single_level: with one tiled level, zoom into that same level and re-encode its
            selected tiles (parity, spec §5.3, §5.6); otherwise prune at that level directly.
        token_budget: hard cap on vision tokens to the LLM (thumbnail and separator included);
            None = the model's context minus the text.
        position_mode: LLM position ids of kept tokens, ``compact`` (spec §5.5) or ``original``.
        rfm_gather_valid_only: RFM passes run over valid tokens only, with their full-sequence
            position ids (ours, spec §11.9); False: the whole canvas with masked placeholders
            (parity, spec §5.1 pass 2).
        rfm_placeholder_logit_bias: None (ours): masked placeholders of an RFM pass get score 0.
            A float: they stay in each head's softmax with this added to their logit (parity:
            ``1.0``, the reference's mask cast to bool, spec §5.1 pass 2;
            :class:`lrs_core.rfm.RfmConfig`). Only matters with ``rfm_gather_valid_only=False``.
        rfm_position_mode: RoPE positions of an RFM pass: ``original`` (each token's position in
            the full-level sequence, gaps where tiles were not selected; spec §5.5) or ``compact``
            (``0..L-1`` over the tokens present, as the LLM sees them; keeps positions small at the
            fine levels of huge scenes).
        grid_n: tiles along the long side of the ``grid`` baseline's view.
        fastv_layer: FastV's K (first layer without the dropped tokens).
        fastv_keep_ratio: FastV's 1 - R.
        pdrop_stages: PyramidDrop's number of drops (at depth s / (stages + 1)).
        pdrop_keep_ratio: PyramidDrop's λ.
        max_new_tokens: most generated tokens.
        do_sample: sample instead of greedy decoding (seeded by ``seed``).
        seed: seed of the sampling generator.
        evidence_tokens_cap: kept tokens listed as evidence (most attended first).
        heatmap_cells: heat-map cells along the scene's long side.
        vision_batch_size: tiles per vision-tower call.
        max_nodata_share: zoom tiles with a larger share of nodata pixels are not chosen, and
            heat-map cells without valid pixels are 0 (1.0 disables both; parity: 1.0).
    """

    preset: PresetField = "default"  # type: ignore[assignment]  # a str; see the module end
    strategy: Strategy = "focus"
    pyramid_rule: str = "default"
    resampler: str = "antialiased"
    select_ratio: float = REFERENCE_RATIO
    keep_ratio: float = REFERENCE_RATIO
    max_zoom_steps: int | None = None
    tiles_cap: int | None = DEFAULT_TILES_CAP
    neighbour_expansion: int = 0
    include_newline_in_selection: bool = False
    keep_all_newlines: bool = False
    reencode_single_level: bool = False
    token_budget: int | None = None
    position_mode: PositionModeName = "compact"
    rfm_gather_valid_only: bool = True
    rfm_position_mode: PositionModeName = "original"
    rfm_placeholder_logit_bias: float | None = None
    grid_n: int = DEFAULT_GRID_N
    fastv_layer: int = 2
    fastv_keep_ratio: float = 0.5
    pdrop_stages: int = 3
    pdrop_keep_ratio: float = 0.5
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    seed: int = 0
    evidence_tokens_cap: int = DEFAULT_EVIDENCE_TOKENS
    heatmap_cells: int = DEFAULT_HEATMAP_CELLS
    vision_batch_size: int = DEFAULT_VISION_BATCH
    max_nodata_share: float = DEFAULT_MAX_NODATA_SHARE

    def __post_init__(self) -> None:
        if self.strategy not in get_args(Strategy):
            raise ConfigError(
                f"FocusConfig.strategy={self.strategy!r} is not one of {get_args(Strategy)}"
            )
        for name, allowed in (
            ("pyramid_rule", ("default", "parity")),
            ("resampler", ("antialiased", "parity")),
            ("position_mode", get_args(PositionModeName)),
            ("rfm_position_mode", get_args(PositionModeName)),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"FocusConfig.{name}={getattr(self, name)!r} is not one of {allowed}"
                )
        bias = self.rfm_placeholder_logit_bias
        if bias is not None and (
            isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias)
        ):
            raise ConfigError(
                f"FocusConfig.rfm_placeholder_logit_bias={bias!r} must be None or a finite number"
            )
        for name in (
            "select_ratio",
            "keep_ratio",
            "fastv_keep_ratio",
            "pdrop_keep_ratio",
            "max_nodata_share",
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0.0 < value <= 1.0
            ):
                raise ConfigError(f"FocusConfig.{name}={value!r} is outside (0, 1]")
        for name, low in (
            ("neighbour_expansion", 0),
            ("grid_n", 1),
            ("fastv_layer", 1),
            ("pdrop_stages", 1),
            ("max_new_tokens", 1),
            ("evidence_tokens_cap", 0),
            ("heatmap_cells", 1),
            ("vision_batch_size", 1),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"FocusConfig.{name}={value!r} must be an integer >= {low}")
        for name, low in (("max_zoom_steps", 0), ("tiles_cap", 1), ("token_budget", 1)):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < low
            ):
                raise ConfigError(
                    f"FocusConfig.{name}={value!r} must be None or an integer >= {low}"
                )
        for name in (
            "include_newline_in_selection",
            "keep_all_newlines",
            "reencode_single_level",
            "rfm_gather_valid_only",
            "do_sample",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"FocusConfig.{name}={getattr(self, name)!r} must be a bool")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-ready plain values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FocusConfig:
        """Rebuild a config from :meth:`to_dict` output (unknown keys raise ConfigError)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"FocusConfig has no fields {unknown}")
        return cls(**data)


def focus_preset(cls: type[FocusConfig], /, name: str, **overrides: Any) -> FocusConfig:
    """Return a named preset, with fields overridden.

    Names: ``default``, ``parity``, ``thumbnail``, ``grid-N`` (N >= 1), ``full``, ``fastv``,
    ``pdrop``.

    Raises:
        ConfigError: unknown name or invalid override.
    """
    fields: dict[str, Any]
    grid = _GRID_PRESET.match(name)
    if name == "default":
        fields = {}
    elif name == "parity":
        fields = {
            "pyramid_rule": "parity",  # the reference's level ladder (spec §1.2)
            "resampler": "parity",  # bilinear, no antialias, from level 0 (spec §1.1, §11.8)
            "select_ratio": REFERENCE_RATIO,  # ρ = 0.25 of the level-1 keys (spec §5.1)
            "keep_ratio": REFERENCE_RATIO,  # ρ = 0.25 at the last level (spec §5.4)
            "max_zoom_steps": 1,  # one refinement step (spec §5.3, §12)
            "tiles_cap": None,  # every tile hit (spec §5.2, §12)
            "include_newline_in_selection": True,  # newlines in S1 and V (spec §5.2, §11.6)
            "keep_all_newlines": True,  # topk ∪ all newlines (spec §5.4)
            "reencode_single_level": True,  # one tiled level: re-select it (spec §5.3, §5.6)
            "rfm_gather_valid_only": False,  # full canvas, masked placeholders (spec §5.1, §11.9)
            # placeholders get +1.0, not -inf, in the scored row (the bool-cast mask, spec §5.1)
            "rfm_placeholder_logit_bias": REFERENCE_PLACEHOLDER_LOGIT_BIAS,
            "position_mode": "compact",  # the LLM sees positions 0..L-1 (spec §5.5)
            "max_nodata_share": 1.0,  # selection by attention only (spec §5.2)
        }
    elif name == "thumbnail":
        fields = {"strategy": "thumbnail"}
    elif grid is not None:
        fields = {"strategy": "grid", "grid_n": int(grid.group(1))}
    elif name in ("full", "fastv", "pdrop"):
        fields = {"strategy": name}
    else:
        raise ConfigError(
            f"preset {name!r} does not exist; choose one of {', '.join(PRESET_NAMES)}"
        )
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"FocusConfig has no fields {unknown}")
    return cls(preset=name, **{**fields, **overrides})


# Attached after the dataclass is built: a classmethod named like the ``preset`` field would
# otherwise become that field's default. Instances read their own ``preset`` string (instance
# attributes shadow this non-data descriptor); the class reads this constructor.
FocusConfig.preset = classmethod(focus_preset)  # type: ignore[assignment]  # see above
