"""The configuration of the coarse-to-fine engine and its named presets.

:class:`FocusConfig` names the strategy (the view the LLM gets) and holds one small frozen config
per concern: :class:`ViewConfig` (pixels and positions), :class:`LoopConfig` (the RFM, selection
and pruning of the zoom loop), :class:`BudgetConfig` (tokens, zoom steps, tiles),
:class:`BaselineConfig` (grid, FastV, PyramidDrop), :class:`GenerationConfig` (decoding),
:class:`OutputConfig` (evidence and heat map) and :class:`PerformanceConfig`.

Presets come from :meth:`FocusConfig.from_preset`; each ``parity`` value cites the spec section
(``reference/algorithm.md``) it reproduces; the ``default`` preset is the paper's full loop with the
fixes of spec §11. Overrides and the serialised form (:meth:`FocusConfig.to_dict`, the
``preset_params`` of every answer record) use flat field names (``keep_ratio``,
``max_new_tokens``); each belongs to exactly one nested config (:data:`FIELD_GROUPS`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

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
#: FastV's K and 1 - R (Chen et al., 2024; as :mod:`lrs_core.models.layer_drop`).
DEFAULT_FASTV_LAYER = 2
DEFAULT_FASTV_KEEP_RATIO = 0.5
#: PyramidDrop's stage count and λ (Xing et al., 2024; as :mod:`lrs_core.models.layer_drop`).
DEFAULT_PDROP_STAGES = 3
DEFAULT_PDROP_KEEP_RATIO = 0.5
_GRID_PRESET = re.compile(r"^grid-(\d+)$")


# -- validation helpers --------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(owner: object, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(owner, name)
    if value not in allowed:
        raise ConfigError(
            f"{type(owner).__name__}.{name}={value!r} is not one of {allowed}; pick one of those"
        )


def _check_ratio(owner: object, name: str) -> None:
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ConfigError(
            f"{type(owner).__name__}.{name}={value!r} is outside (0, 1]; give a share in (0, 1]"
        )


def _check_int(owner: object, name: str, low: int, *, optional: bool = False) -> None:
    value = getattr(owner, name)
    if optional and value is None:
        return
    if not _is_int(value) or value < low:
        none = "None or " if optional else ""
        raise ConfigError(
            f"{type(owner).__name__}.{name}={value!r} must be {none}an integer >= {low}"
        )


def _check_bool(owner: object, name: str) -> None:
    value = getattr(owner, name)
    if not isinstance(value, bool):
        raise ConfigError(f"{type(owner).__name__}.{name}={value!r} must be a bool (true/false)")


# -- the nested configs ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ViewConfig:
    """How pixels and positions of every view are made.

    Attributes:
        pyramid_rule: DIP level rule, ``default`` or ``parity``
            (:class:`lrs_core.dip.plan.PyramidRule`).
        resampler: tile resampler, ``antialiased`` or ``parity`` (``tiles.Resampler``).
        position_mode: LLM position ids of kept tokens, ``compact`` (spec §5.5) or ``original``.
    """

    pyramid_rule: str = "default"
    resampler: str = "antialiased"
    position_mode: PositionModeName = "compact"

    def __post_init__(self) -> None:
        _check_choice(self, "pyramid_rule", ("default", "parity"))
        _check_choice(self, "resampler", ("antialiased", "parity"))
        _check_choice(self, "position_mode", get_args(PositionModeName))


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """The zoom loop of the ``focus`` strategy: RFM passes, tile selection and pruning.

    Attributes:
        select_ratio: share of the scored tokens whose tiles are zoomed into (spec §5.1).
        keep_ratio: share of the last level's tokens kept for the LLM (spec §5.4).
        neighbour_expansion: also zoom into tiles within this Chebyshev distance of a chosen one.
        include_newline_in_selection: newline tokens are RFM keys and take part in selection and in
            the keep ratio (parity, spec §5.2, §11.6).
        keep_all_newlines: every row's newline reaches the LLM, not only rows with kept tokens
            (parity, spec §5.4).
        reencode_single_level: with one tiled level, zoom into that same level and re-encode its
            selected tiles (parity, spec §5.3, §5.6); otherwise prune at that level directly.
        rfm_gather_valid_only: RFM passes run over valid tokens only, with their full-sequence
            position ids (ours, spec §11.9); False: the whole canvas with masked placeholders
            (parity, spec §5.1 pass 2).
        rfm_position_mode: RoPE positions of an RFM pass: ``original`` (each token's position in
            the full-level sequence, gaps where tiles were not selected; spec §5.5) or ``compact``
            (``0..L-1`` over the tokens present, as the LLM sees them; keeps positions small at the
            fine levels of huge scenes).
        rfm_placeholder_logit_bias: None (ours): masked placeholders of an RFM pass get score 0.
            A float: they stay in each head's softmax with this added to their logit (parity:
            ``1.0``, the reference's mask cast to bool, spec §5.1 pass 2;
            :class:`lrs_core.focus.rfm.RfmConfig`). Only matters with
            ``rfm_gather_valid_only=False``.
        max_nodata_share: zoom tiles with a larger share of nodata pixels are not chosen, and
            heat-map cells without valid pixels are 0 (1.0 disables both; parity: 1.0).
    """

    select_ratio: float = REFERENCE_RATIO
    keep_ratio: float = REFERENCE_RATIO
    neighbour_expansion: int = 0
    include_newline_in_selection: bool = False
    keep_all_newlines: bool = False
    reencode_single_level: bool = False
    rfm_gather_valid_only: bool = True
    rfm_position_mode: PositionModeName = "original"
    rfm_placeholder_logit_bias: float | None = None
    max_nodata_share: float = DEFAULT_MAX_NODATA_SHARE

    def __post_init__(self) -> None:
        for name in ("select_ratio", "keep_ratio", "max_nodata_share"):
            _check_ratio(self, name)
        _check_int(self, "neighbour_expansion", 0)
        for name in (
            "include_newline_in_selection",
            "keep_all_newlines",
            "reencode_single_level",
            "rfm_gather_valid_only",
        ):
            _check_bool(self, name)
        _check_choice(self, "rfm_position_mode", get_args(PositionModeName))
        bias = self.rfm_placeholder_logit_bias
        if bias is not None and (
            isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias)
        ):
            raise ConfigError(
                f"LoopConfig.rfm_placeholder_logit_bias={bias!r} must be None or a finite number"
            )


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    """How much of the scene any view may spend.

    Attributes:
        token_budget: hard cap on vision tokens to the LLM (thumbnail and separator included);
            None = the model's context minus the text.
        max_zoom_steps: most zoom steps; None = down to the finest level. The ``full`` and
            layer-drop views feed the level this many steps below level 1.
        tiles_cap: most tiles per zoom step; None = every tile hit.
    """

    token_budget: int | None = None
    max_zoom_steps: int | None = None
    tiles_cap: int | None = DEFAULT_TILES_CAP

    def __post_init__(self) -> None:
        _check_int(self, "token_budget", 1, optional=True)
        _check_int(self, "max_zoom_steps", 0, optional=True)
        _check_int(self, "tiles_cap", 1, optional=True)


@dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    """Parameters of the baseline views.

    Attributes:
        grid_n: tiles along the long side of the ``grid`` baseline's view.
        fastv_layer: FastV's K (first layer without the dropped tokens).
        fastv_keep_ratio: FastV's 1 - R.
        pdrop_stages: PyramidDrop's number of drops (at depth s / (stages + 1)).
        pdrop_keep_ratio: PyramidDrop's λ.
    """

    grid_n: int = DEFAULT_GRID_N
    fastv_layer: int = DEFAULT_FASTV_LAYER
    fastv_keep_ratio: float = DEFAULT_FASTV_KEEP_RATIO
    pdrop_stages: int = DEFAULT_PDROP_STAGES
    pdrop_keep_ratio: float = DEFAULT_PDROP_KEEP_RATIO

    def __post_init__(self) -> None:
        _check_int(self, "grid_n", 1)
        _check_int(self, "fastv_layer", 1)
        _check_int(self, "pdrop_stages", 1)
        _check_ratio(self, "fastv_keep_ratio")
        _check_ratio(self, "pdrop_keep_ratio")


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    """How the LLM decodes.

    Attributes:
        max_new_tokens: most generated tokens.
        do_sample: sample instead of greedy decoding (seeded by ``seed``).
        seed: seed of the sampling generator.
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int(self, "max_new_tokens", 1)
        _check_bool(self, "do_sample")
        _check_int(self, "seed", 0)


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    """What an answer record reports.

    Attributes:
        evidence_tokens_cap: kept tokens listed as evidence (most attended first).
        heatmap_cells: heat-map cells along the scene's long side.
    """

    evidence_tokens_cap: int = DEFAULT_EVIDENCE_TOKENS
    heatmap_cells: int = DEFAULT_HEATMAP_CELLS

    def __post_init__(self) -> None:
        _check_int(self, "evidence_tokens_cap", 0)
        _check_int(self, "heatmap_cells", 1)


@dataclass(frozen=True, kw_only=True)
class PerformanceConfig:
    """Settings that change speed and memory, never the answer.

    Attributes:
        vision_batch_size: tiles per vision-tower call.
    """

    vision_batch_size: int = DEFAULT_VISION_BATCH

    def __post_init__(self) -> None:
        _check_int(self, "vision_batch_size", 1)


#: The nested configs of :class:`FocusConfig` by attribute name.
GROUPS: dict[str, type[Any]] = {
    "view": ViewConfig,
    "loop": LoopConfig,
    "budget": BudgetConfig,
    "baseline": BaselineConfig,
    "generation": GenerationConfig,
    "output": OutputConfig,
    "performance": PerformanceConfig,
}
#: Flat field name -> the nested config (attribute of :class:`FocusConfig`) that holds it.
FIELD_GROUPS: dict[str, str] = {
    f.name: group for group, cls in GROUPS.items() for f in dataclasses.fields(cls)
}
_TOP_FIELDS = ("preset", "strategy")


@dataclass(frozen=True, kw_only=True)
class FocusConfig:
    """How the engine builds the LLM's view of a scene (see ``docs/method.md``).

    Attributes:
        preset: the preset name this config came from (recorded in every answer).
        strategy: ``focus`` (coarse-to-fine with the RFM) or a baseline view
            (:func:`lrs_core.focus.views.view_for` turns it into a view).
        view: pixels and positions.
        loop: the zoom loop (``focus`` only).
        budget: token, zoom and tile budgets.
        baseline: grid, FastV and PyramidDrop parameters.
        generation: decoding.
        output: evidence and heat map.
        performance: speed and memory.
    """

    preset: str = "default"
    strategy: Strategy = "focus"
    view: ViewConfig = field(default_factory=ViewConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)

    def __post_init__(self) -> None:
        if self.strategy not in get_args(Strategy):
            raise ConfigError(
                f"FocusConfig.strategy={self.strategy!r} is not one of {get_args(Strategy)}"
            )
        if not isinstance(self.preset, str):
            raise ConfigError(f"FocusConfig.preset={self.preset!r} must be a preset name")
        for group, cls in GROUPS.items():
            if not isinstance(getattr(self, group), cls):
                raise ConfigError(
                    f"FocusConfig.{group}={getattr(self, group)!r} must be a {cls.__name__}"
                )

    @classmethod
    def from_preset(cls, name: str, /, **overrides: Any) -> FocusConfig:
        """Return a named preset, with fields overridden.

        Names: ``default``, ``parity``, ``thumbnail``, ``grid-N`` (N >= 1), ``full``, ``fastv``,
        ``pdrop``. Overrides are flat field names (``keep_ratio=0.5``, ``max_new_tokens=8``) or
        whole nested configs (``budget=BudgetConfig(...)``, or a dict of its fields).

        Raises:
            ConfigError: unknown name or field, or an invalid value.
        """
        return cls.from_dict({"preset": name, **_preset_fields(name)}).override(**overrides)

    def override(self, **values: Any) -> FocusConfig:
        """Return a copy with flat fields or nested configs replaced (as :meth:`from_preset`).

        Raises:
            ConfigError: unknown field or invalid value.
        """
        return self.from_dict({**self.to_dict(), **_flatten(values)})

    def to_dict(self) -> dict[str, Any]:
        """Return the config as flat JSON-ready values (``preset``, ``strategy``, every field)."""
        flat: dict[str, Any] = {"preset": self.preset, "strategy": self.strategy}
        for group in GROUPS:
            flat.update(dataclasses.asdict(getattr(self, group)))
        return flat

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FocusConfig:
        """Rebuild a config from :meth:`to_dict` output, flat or with nested dicts.

        Missing fields take their defaults (not the preset's: ``to_dict`` writes every field).

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        flat = _flatten(data)
        parts: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
        for name, value in flat.items():
            if name not in _TOP_FIELDS:
                parts[FIELD_GROUPS[name]][name] = value
        top = {name: flat[name] for name in _TOP_FIELDS if name in flat}
        nested = {group: GROUPS[group](**values) for group, values in parts.items()}
        return cls(**top, **nested)


def _flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat field names from flat names and nested configs (objects or dicts) mixed.

    Raises:
        ConfigError: a name that is neither a field nor a nested config.
    """
    flat: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in values.items():
        if name in GROUPS:
            if isinstance(value, GROUPS[name]):
                flat.update(dataclasses.asdict(value))
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"FocusConfig.{name}={value!r} must be a {GROUPS[name].__name__} or a dict"
                )
            inner = dict(value)
            wrong = sorted(set(inner) - {f.name for f in dataclasses.fields(GROUPS[name])})
            unknown.extend(f"{name}.{w}" for w in wrong)
            flat.update(inner)
        elif name in FIELD_GROUPS or name in _TOP_FIELDS:
            flat[name] = value
        else:
            unknown.append(name)
    if unknown:
        raise ConfigError(
            f"FocusConfig has no fields {sorted(unknown)}; the fields are "
            f"{', '.join(sorted(FIELD_GROUPS))}"
        )
    return flat


def _preset_fields(name: str) -> dict[str, Any]:
    """Flat fields a preset sets over the defaults.

    Raises:
        ConfigError: unknown name.
    """
    grid = _GRID_PRESET.match(name)
    if name == "default":
        return {}
    if name == "parity":
        return {
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
    if name == "thumbnail":
        return {"strategy": "thumbnail"}
    if grid is not None:
        return {"strategy": "grid", "grid_n": int(grid.group(1))}
    if name in ("full", "fastv", "pdrop"):
        return {"strategy": name}
    raise ConfigError(f"preset {name!r} does not exist; choose one of {', '.join(PRESET_NAMES)}")
