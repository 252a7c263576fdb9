"""Views, the counting executor and the nested config, without any model (pure and fast)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

import lrs_core.focus
from lrs_core.dip.plan import DipConfig, plan_pyramid
from lrs_core.errors import ConfigError, TokenBudgetError
from lrs_core.focus.config import (
    FIELD_GROUPS,
    GROUPS,
    BudgetConfig,
    FocusConfig,
    GenerationConfig,
    LoopConfig,
)
from lrs_core.focus.executor import CountingExecutor
from lrs_core.focus.loop import run_view
from lrs_core.focus.state import FocusState, Generated
from lrs_core.focus.views import (
    FastVView,
    FocusView,
    FullView,
    GridView,
    LayerDropView,
    LlmView,
    PyramidDropView,
    ThumbnailView,
    ViewContext,
    view_for,
)
from lrs_core.models.flops import KNOWN_DIMS
from lrs_core.models.layer_drop import LayerDropSchedule
from lrs_core.models.prompt import PromptIds

#: A prompt of 20 text tokens around the image (ids do not matter to the views).
PROMPT = PromptIds(before_image=list(range(12)), after_image=list(range(8)))
#: LLaVA-1.5 geometry: 336-px tiles, 24 x 24 thumbnail tokens, 12 x 12 pooled tokens per tile.
CONTEXT_TOKENS = 4096
LLM_LAYERS = 32


def _context(preset: str, *, newline: bool = True, **overrides: Any) -> ViewContext:
    config = FocusConfig.from_preset(preset, **overrides)
    dip = DipConfig.preset(config.view.pyramid_rule)
    return ViewContext(
        config=config,
        dip_config=dip,
        thumbnail_tokens=dip.thumbnail_tokens,
        separator_id=0,
        has_image_newline=newline,
        n_llm_layers=LLM_LAYERS,
    )


def _dry_run(
    ctx: ViewContext, size_wh: tuple[int, int] = (2100, 1400)
) -> tuple[FocusState, LlmView, Generated]:
    """Run the loop with the counting executor over a bare scene size."""
    plan = plan_pyramid(*size_wh, config=ctx.dip_config)
    budget = ctx.config.budget.token_budget
    left = CONTEXT_TOKENS - PROMPT.n_text_tokens
    state = FocusState(
        question="q",
        prompt=PROMPT,
        plan=plan,
        allowance=left if budget is None else min(budget, left),
    )
    counter = CountingExecutor(ctx.config, dims=KNOWN_DIMS["qwen2-7b"], n_llm_layers=LLM_LAYERS)
    view = view_for(ctx, dry_run=True)
    built = run_view(view, counter, state, None)
    generated = counter.generate(state, built.llm_view, None, view.layer_drop())
    return state, built.llm_view, generated


@pytest.mark.parametrize(
    ("preset", "view_type"),
    [
        ("default", FocusView),
        ("parity", FocusView),
        ("thumbnail", ThumbnailView),
        ("grid-3", GridView),
        ("full", FullView),
        ("fastv", FastVView),
        ("pdrop", PyramidDropView),
    ],
)
def test_each_strategy_is_a_view(preset: str, view_type: type) -> None:
    view = view_for(_context(preset))
    assert type(view) is view_type
    assert view.scores == (view_type is FocusView)
    assert (view.layer_drop() is not None) == issubclass(view_type, LayerDropView)


def test_the_layer_drop_schedule_is_the_configured_one() -> None:
    fastv = view_for(_context("fastv", fastv_layer=3, fastv_keep_ratio=0.25)).layer_drop()
    assert fastv == LayerDropSchedule.fastv(layer=3, keep_ratio=0.25)
    pdrop = view_for(_context("pdrop", pdrop_stages=2)).layer_drop()
    assert pdrop == LayerDropSchedule.pdrop(num_layers=LLM_LAYERS, keep_ratio=0.5, n_stages=2)


def test_a_dry_run_needs_no_model() -> None:
    state, llm_view, generated = _dry_run(_context("default"))
    assert llm_view.sequence is None and "upper bound" in generated.extra["plan"]
    assert len(state.visited) == state.plan.n_levels  # zooms to the finest level
    assert state.stop_reason == "finest level reached"
    assert not any(level.scored for level in state.visited)  # scores stay unknown
    first = state.visited[0]
    assert len(first.tiles_rc) == first.level.n_tiles
    assert all(len(v.tiles_rc) <= 12 for v in state.visited[1:])  # tiles_cap
    assert state.tiles_encoded == 1 + sum(len(v.tiles_rc) for v in state.visited)
    assert len(state.rfm_tokens) == len(state.visited)
    assert generated.llm_flops > 0
    assert generated.decode_steps == FocusConfig().generation.max_new_tokens


def test_a_model_without_image_newline_counts_none() -> None:
    with_newline, _, _ = _dry_run(_context("default", max_zoom_steps=0))
    without, _, _ = _dry_run(_context("default", newline=False, max_zoom_steps=0))
    rows = with_newline.visited[0].level.token_grid_hw[0]
    assert with_newline.rfm_tokens[0] - without.rfm_tokens[0] == rows


def test_a_tight_budget_stops_the_zoom_and_baselines_refuse_it() -> None:
    roomy, _, _ = _dry_run(_context("default", token_budget=700))
    assert all(len(v.tiles_rc) < 12 for v in roomy.visited[1:])  # fewer tiles fit, not 12
    state, llm_view, _ = _dry_run(_context("default", token_budget=590))
    assert len(state.visited) == 1 and "over the 13 allowed" in state.stop_reason
    assert llm_view.n_vision <= 590
    with pytest.raises(TokenBudgetError, match="token_budget"):
        _dry_run(_context("grid-3", token_budget=700))
    with pytest.raises(TokenBudgetError, match="thumbnail needs"):
        _dry_run(_context("thumbnail", token_budget=500))


# -- the nested config -------------------------------------------------------------------------


def test_every_flat_field_belongs_to_one_nested_config() -> None:
    nested = [f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)]
    assert len(nested) == len(set(nested)) == len(FIELD_GROUPS)
    assert set(FocusConfig().to_dict()) == {"preset", "strategy", *FIELD_GROUPS}


def test_overrides_take_flat_names_or_nested_configs() -> None:
    flat = FocusConfig.from_preset("parity", token_budget=900, max_new_tokens=4)
    assert flat.budget == BudgetConfig(token_budget=900, max_zoom_steps=1, tiles_cap=None)
    assert flat.generation == GenerationConfig(max_new_tokens=4)
    nested = FocusConfig.from_preset(
        "parity", budget={"token_budget": 900}, generation=GenerationConfig(max_new_tokens=4)
    )
    assert nested == flat
    assert flat.override(keep_ratio=0.5).loop.keep_ratio == 0.5
    assert flat.override(keep_ratio=0.5).loop.keep_all_newlines  # the rest stays parity


def test_the_config_round_trips_flat_and_nested() -> None:
    config = FocusConfig.from_preset("grid-6", do_sample=True, seed=3)
    assert FocusConfig.from_dict(config.to_dict()) == config
    nested = {
        "preset": "grid-6",
        "strategy": "grid",
        **{group: dataclasses.asdict(getattr(config, group)) for group in GROUPS},
    }
    assert FocusConfig.from_dict(nested) == config


def test_configs_are_frozen_and_validated_by_field() -> None:
    config = FocusConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.loop = LoopConfig()  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"LoopConfig\.select_ratio=1\.5"):
        FocusConfig.from_preset("default", select_ratio=1.5)
    with pytest.raises(ConfigError, match=r"GenerationConfig\.max_new_tokens=0"):
        FocusConfig.from_preset("default", max_new_tokens=0)
    with pytest.raises(ConfigError, match=r"budget\.zoom"):
        FocusConfig.from_preset("default", budget={"zoom": 1})
    with pytest.raises(ConfigError, match="must be a LoopConfig"):
        FocusConfig(loop={"keep_ratio": 0.5})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="preset 'grid' does not exist"):
        FocusConfig.from_preset("grid")


# -- the package's imports -----------------------------------------------------------------------


def test_no_focus_module_imports_inside_a_function() -> None:
    """Cycles are not dodged with function-level imports: every import is at module level."""
    package = Path(lrs_core.focus.__file__).parent
    late: list[str] = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        late.append(f"{path.name}:{inner.lineno}")
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                late.append(f"{path.name}:{node.lineno} (TYPE_CHECKING)")
    assert late == []
