"""Tests of the coarse-to-fine engine, its presets and baselines (tiny model, real stores)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from lrs_core.dip.plan import DipConfig, plan_pyramid
from lrs_core.errors import ConfigError, TokenBudgetError
from lrs_core.focus.engine import FocusConfig, FocusEngine, ScoreRequest, grid_level
from lrs_core.focus.select import prune_tokens, select_tiles_parity, select_tiles_ranked
from lrs_core.models.layout import TokenKind
from lrs_core.models.loading.loaded import LoadedModel
from lrs_core.models.prompt import tokenize_prompt
from lrs_core.raster.pyramid import Pyramid, open_pyramid
from lrs_core.records import AnswerRecord

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTION = "How many ships are in the harbour?"
#: Generated tokens in these tests (the answers of a random model carry no meaning).
NEW_TOKENS = 2
#: A level-0 pixel box in the 2100 x 1400 scene the planted scorer favours.
PLANTED_BOX = (1500.0, 900.0, 1560.0, 960.0)


def _overlaps(box: tuple[float, ...], other: tuple[float, ...]) -> bool:
    return box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]


class PlantedScorer:
    """Scores 1 for tokens whose footprint overlaps a box, 0.001 elsewhere, 0 at newlines."""

    def __init__(self, box: tuple[float, float, float, float]) -> None:
        self.box = box
        self.calls = 0

    def __call__(self, request: ScoreRequest) -> np.ndarray:
        self.calls += 1
        scores = np.zeros(len(request.key_grid_rc), dtype=np.float32)
        for index, (row, col) in enumerate(request.key_grid_rc.tolist()):
            if request.key_is_newline[index] or not request.key_valid[index]:
                continue
            bbox = request.level.token_bbox_px((row, col))
            scores[index] = 1.0 if _overlaps(bbox, self.box) else 0.001
        return scores


@pytest.fixture(scope="module")
def large_pyramid(large_store: Path) -> Pyramid:
    return open_pyramid(large_store)


def _engine(loaded: LoadedModel, preset: str, **overrides: Any) -> FocusEngine:
    scorer = overrides.pop("scorer", None)
    config = FocusConfig.from_preset(preset, max_new_tokens=NEW_TOKENS, **overrides)
    return FocusEngine(loaded, config=config, scorer=scorer)


# -- the shared contract of every engine preset ------------------------------------------------


class FocusEngineContract:
    """Every preset: the budget holds, tiles lie in their level, a seeded run is deterministic."""

    preset: ClassVar[str]
    overrides: ClassVar[dict[str, Any]] = {}
    #: A budget the preset must respect (or refuse with TokenBudgetError when ``budget_refused``).
    budget: ClassVar[int] = 700
    budget_refused: ClassVar[bool] = False
    #: Tokens of the thumbnail (LLaVA: 24 x 24 unpooled; Qwen-VL: 12 x 12 at 336 px).
    thumbnail_tokens: ClassVar[int] = 576

    @pytest.fixture(scope="class")
    @classmethod
    def record(cls, tiny_model: LoadedModel, large_pyramid: Pyramid) -> AnswerRecord:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)  # class-scoped: runs before the function-scoped thread fixture
        try:
            return _engine(tiny_model, cls.preset, **cls.overrides).answer(large_pyramid, QUESTION)
        finally:
            torch.set_num_threads(previous)

    def test_record_is_complete(self, record: AnswerRecord) -> None:
        acc = record.accounting
        assert record.preset == self.preset
        assert record.preset_params["preset"] == self.preset
        assert FocusConfig.from_dict({k: v for k, v in record.preset_params.items() if k != "run"})
        assert acc.vision_tiles_encoded >= 1 and not acc.planned
        assert acc.llm_prefill_tokens == acc.vision_tokens_to_llm + acc.llm_text_tokens
        assert 1 <= acc.decode_steps <= NEW_TOKENS
        assert acc.flops.vision_flops > 0 and acc.flops.llm_flops > 0
        assert set(acc.seconds) >= {"read", "vision", "rfm", "llm", "total"}
        assert acc.tokens_per_level[0] == self.thumbnail_tokens
        assert AnswerRecord.from_dict(record.to_dict()) == record

    def test_tiles_inside_their_level(self, record: AnswerRecord) -> None:
        width, height = record.scene.size_wh
        plan = plan_pyramid(
            width, height, config=DipConfig.preset(record.preset_params["pyramid_rule"])
        )
        levels = {t.dip_level for t in record.evidence_tiles}
        for tile in record.evidence_tiles:
            x0, y0, x1, y1 = tile.bbox_px
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            if record.preset_params["strategy"] == "grid":
                grid_hw = grid_level(
                    (height, width), record.preset_params["grid_n"], config=plan.config
                ).grid_hw
            else:
                grid_hw = plan.level(tile.dip_level).grid_hw
            assert 0 <= tile.tile_rc[0] < grid_hw[0] and 0 <= tile.tile_rc[1] < grid_hw[1]
            assert tile.is_final == (tile.dip_level == max(levels))

    def test_budget_respected(self, tiny_model: LoadedModel, large_pyramid: Pyramid) -> None:
        engine = _engine(tiny_model, self.preset, **{**self.overrides, "token_budget": self.budget})
        if self.budget_refused:
            with pytest.raises(TokenBudgetError, match="token_budget"):
                engine.prepare(large_pyramid, QUESTION)
            return
        llm_input = engine.prepare(large_pyramid, QUESTION)
        assert llm_input.n_vision <= self.budget

    def test_seeded_run_is_deterministic(
        self, tiny_model: LoadedModel, large_pyramid: Pyramid, record: AnswerRecord
    ) -> None:
        again = _engine(tiny_model, self.preset, **self.overrides).answer(
            large_pyramid, QUESTION, question_id=record.question_id
        )
        assert again.answer == record.answer
        assert again.evidence_tiles == record.evidence_tiles
        assert again.evidence_tokens == record.evidence_tokens
        assert again.accounting.tokens_per_level == record.accounting.tokens_per_level


class TestDefaultContract(FocusEngineContract):
    preset = "default"


class TestParityContract(FocusEngineContract):
    preset = "parity"


class TestThumbnailContract(FocusEngineContract):
    preset = "thumbnail"
    budget = 600


class TestGridContract(FocusEngineContract):
    preset = "grid-3"
    budget = 1000
    budget_refused = True


class TestFullContract(FocusEngineContract):
    preset = "full"
    overrides: ClassVar[dict[str, Any]] = {"max_zoom_steps": 1}
    budget = 1500  # level 2 (32 x 49 + 577) does not fit; the view steps down to level 1


class TestFastvContract(FocusEngineContract):
    preset = "fastv"
    overrides: ClassVar[dict[str, Any]] = {"max_zoom_steps": 0}
    budget = 1500


class TestPdropContract(FocusEngineContract):
    preset = "pdrop"
    overrides: ClassVar[dict[str, Any]] = {"max_zoom_steps": 0}
    budget = 1500


# -- presets -----------------------------------------------------------------------------------


def test_presets_and_config_validation() -> None:
    parity = FocusConfig.from_preset("parity")
    assert (parity.budget.max_zoom_steps, parity.budget.tiles_cap) == (1, None)
    assert parity.loop.keep_ratio == 0.25
    assert parity.loop.include_newline_in_selection and parity.loop.keep_all_newlines
    assert not parity.loop.rfm_gather_valid_only and parity.view.resampler == "parity"
    default = FocusConfig()
    assert default == FocusConfig.from_preset("default")
    assert default.budget.max_zoom_steps is None and not default.loop.include_newline_in_selection
    assert FocusConfig.from_preset("grid-6").baseline.grid_n == 6
    assert FocusConfig.from_dict(parity.to_dict()) == parity
    with pytest.raises(ConfigError, match="grid-N"):
        FocusConfig.from_preset("grid")
    with pytest.raises(ConfigError, match="keep_ratio"):
        FocusConfig.from_preset("default", keep_ratio=0.0)
    with pytest.raises(ConfigError, match="token_budget"):
        FocusConfig.from_preset("default", token_budget=0)
    with pytest.raises(ConfigError, match="no fields"):
        FocusConfig.from_preset("default", zoom=3)


# -- budgets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [577, 578, 640, 900, 2500])
def test_question_survives_any_budget(
    tiny_model: LoadedModel, large_pyramid: Pyramid, budget: int
) -> None:
    engine = _engine(tiny_model, "default", token_budget=budget, scorer=PlantedScorer(PLANTED_BOX))
    prompt = tokenize_prompt(
        tiny_model.tokenizer, QUESTION, template=tiny_model.model.config.chat_template
    )
    if budget < 577:
        with pytest.raises(TokenBudgetError):
            engine.prepare(large_pyramid, QUESTION)
        return
    llm_input = engine.prepare(large_pyramid, QUESTION)
    layout = llm_input.sequence.layout
    tail = layout.token_id[-len(prompt.after_image) :].tolist()
    assert tail == prompt.after_image
    assert layout.token_id[: len(prompt.before_image)].tolist() == prompt.before_image
    assert llm_input.n_vision <= budget
    assert (layout.kind == TokenKind.THUMBNAIL.value).sum() == 576


def test_long_question_is_kept_whole_and_vision_pruned_to_the_context(
    tiny_model: LoadedModel, large_pyramid: Pyramid
) -> None:
    question = " ".join(["Which building is the largest?"] * 450)
    engine = _engine(tiny_model, "default", scorer=PlantedScorer(PLANTED_BOX))
    llm_input = engine.prepare(large_pyramid, question)
    prompt = tokenize_prompt(
        tiny_model.tokenizer, question, template=tiny_model.model.config.chat_template
    )
    assert llm_input.n_text == prompt.n_text_tokens
    assert llm_input.sequence.length <= tiny_model.model.config.max_context_tokens


def test_text_alone_over_the_context_raises(
    tiny_model: LoadedModel, large_pyramid: Pyramid
) -> None:
    question = " ".join(["Are there any cars parked near the stadium?"] * 800)
    engine = _engine(tiny_model, "default")
    with pytest.raises(TokenBudgetError, match="context"):
        engine.answer(large_pyramid, question)


# -- the loop ----------------------------------------------------------------------------------


def test_planted_scores_zoom_into_the_region_at_every_level(
    tiny_model: LoadedModel, large_pyramid: Pyramid
) -> None:
    scorer = PlantedScorer(PLANTED_BOX)
    engine = _engine(tiny_model, "default", tiles_cap=4, scorer=scorer)
    record = engine.answer(large_pyramid, QUESTION)
    plan = plan_pyramid(2100, 1400, config=engine.dip_config)
    visited = sorted({t.dip_level for t in record.evidence_tiles})
    assert visited == [1, 2, 3] and scorer.calls == 3
    for dip_level in visited:
        tiles = {t.tile_rc for t in record.evidence_tiles if t.dip_level == dip_level}
        assert plan.level(dip_level).tiles_covering(PLANTED_BOX) <= tiles
    final = [t for t in record.evidence_tiles if t.is_final]
    assert len(final) <= 4
    best = max(final, key=lambda t: t.score)
    assert _overlaps(best.bbox_px, PLANTED_BOX)
    assert all(_overlaps(t.bbox_px, PLANTED_BOX) for t in record.evidence_tokens if t.score == 1.0)
    assert record.evidence_tokens[0].score == 1.0
    assert record.heatmap is not None
    heat = np.asarray(record.heatmap.values).reshape(record.heatmap.shape_hw)
    row, col = np.unravel_index(int(heat.argmax()), heat.shape)
    cell_h, cell_w = 1400 / heat.shape[0], 2100 / heat.shape[1]
    cell = (col * cell_w, row * cell_h, (col + 1) * cell_w, (row + 1) * cell_h)
    assert _overlaps(cell, PLANTED_BOX)


def test_parity_and_default_differ_where_the_spec_says(
    tiny_model: LoadedModel, large_pyramid: Pyramid
) -> None:
    box = (0.0, 0.0, 40.0, 40.0)  # top-left: our rule never needs the right column
    default = _engine(tiny_model, "default", tiles_cap=2, scorer=PlantedScorer(box))
    parity = _engine(tiny_model, "parity", scorer=PlantedScorer(box))
    ours, theirs = default.answer(large_pyramid, QUESTION), parity.answer(large_pyramid, QUESTION)
    # depth: one zoom step (spec §5.3) against the whole ladder
    assert sorted({t.dip_level for t in theirs.evidence_tiles}) == [1, 2]
    assert sorted({t.dip_level for t in ours.evidence_tiles}) == [1, 2, 3]
    # newline selection: the right-most column of level 2 is always zoomed in parity (spec §5.2)
    level2 = plan_pyramid(2100, 1400, config=parity.dip_config).level(2)
    rows, cols = level2.grid_hw
    parity_tiles = {t.tile_rc for t in theirs.evidence_tiles if t.dip_level == 2}
    assert {(r, cols - 1) for r in range(rows)} <= parity_tiles
    ours_level2 = {t.tile_rc for t in ours.evidence_tiles if t.dip_level == 2}
    assert all(col < cols - 1 for _, col in ours_level2)
    # newline keeping: every row in parity (spec §5.4), kept rows only in ours
    for engine, all_rows in ((parity, True), (default, False)):
        layout = engine.prepare(large_pyramid, QUESTION).sequence.layout
        newline_rows = set(layout.grid_r[layout.kind == TokenKind.NEWLINE.value].tolist())
        token_rows = set(layout.grid_r[layout.kind == TokenKind.LEVEL.value].tolist())
        assert layout.level_grid_hw is not None
        if all_rows:
            assert len(newline_rows) == layout.level_grid_hw[0]
        else:
            assert newline_rows == token_rows


def test_keeping_everything_equals_the_unpruned_full_input(
    tiny_model: LoadedModel, large_pyramid: Pyramid
) -> None:
    kept = _engine(
        tiny_model, "default", select_ratio=1.0, keep_ratio=1.0, tiles_cap=None, max_zoom_steps=1
    ).prepare(large_pyramid, QUESTION)
    full = _engine(tiny_model, "full", max_zoom_steps=1).prepare(large_pyramid, QUESTION)
    assert kept.level is not None and full.level is not None
    assert kept.level.dip_level == full.level.dip_level == 2
    for name in ("kind", "token_id", "grid_r", "grid_c"):
        assert np.array_equal(
            getattr(kept.sequence.layout, name), getattr(full.sequence.layout, name)
        )
    torch.testing.assert_close(kept.inputs_embeds, full.inputs_embeds, rtol=1e-5, atol=1e-6)
    assert torch.equal(kept.position_ids, full.position_ids)


def test_parity_with_one_tiled_level_reencodes_it(
    tiny_model: LoadedModel, ingested_store: Path
) -> None:
    pyramid = open_pyramid(ingested_store)  # 1000 x 700: one tiled level
    record = _engine(tiny_model, "parity").answer(pyramid, QUESTION)
    level1 = [t for t in record.evidence_tiles if t.dip_level == 1]
    n_level = plan_pyramid(1000, 700, config=DipConfig.preset("parity")).level(1).n_tiles
    assert len(level1) > n_level  # visited twice: all tiles, then the selected ones again
    assert record.accounting.vision_tiles_encoded == 1 + len(level1)
    assert record.preset_params["run"]["rfm_passes"] == 2
    ours = _engine(tiny_model, "default").answer(pyramid, QUESTION)
    assert ours.preset_params["run"]["rfm_passes"] == 1


def test_answer_many_shares_the_coarse_work(
    tiny_model: LoadedModel, large_pyramid: Pyramid
) -> None:
    engine = _engine(tiny_model, "default", scorer=PlantedScorer(PLANTED_BOX))
    first, second = engine.answer_many(
        large_pyramid, [("a", QUESTION), ("b", "Is there a bridge over the river?")]
    )
    n_level1 = plan_pyramid(2100, 1400, config=engine.dip_config).level(1).n_tiles
    assert first.accounting.vision_tiles_cached == 0
    assert second.accounting.vision_tiles_encoded == 0  # same planted region: every tile cached
    assert second.accounting.vision_tiles_cached >= 1 + n_level1
    assert second.accounting.flops.vision_flops == 0


# -- dry runs ----------------------------------------------------------------------------------


#: Every preset with the overrides its plan == run check uses. ``default``/``parity`` stop at
#: level 1 (no zoom choice), so only the pruned token count is left to the scores.
PLAN_CASES: list[tuple[str, dict[str, Any]]] = [
    ("default", {"max_zoom_steps": 0}),
    ("parity", {"max_zoom_steps": 0}),
    ("thumbnail", {}),
    ("grid-3", {}),
    ("full", {"max_zoom_steps": 1}),
    ("fastv", {"max_zoom_steps": 0}),
    ("pdrop", {"max_zoom_steps": 0}),
]


def assert_plan_equals_run(planned: AnswerRecord, ran: AnswerRecord) -> None:
    """A plan counts what the run did; for a scoring view the kept tokens are an upper bound."""
    p, r = planned.accounting, ran.accounting
    assert p.planned and not r.planned
    for name in ("vision_tiles_encoded", "tokens_per_level", "llm_text_tokens"):
        assert getattr(p, name) == getattr(r, name), name
    assert p.flops.vision_flops == r.flops.vision_flops
    assert p.flops.rfm_flops == r.flops.rfm_flops
    assert planned.preset_params["run"]["rfm_tokens"] == ran.preset_params["run"]["rfm_tokens"]
    assert planned.preset_params["run"]["stop_reason"] == ran.preset_params["run"]["stop_reason"]
    assert [(t.dip_level, t.tile_rc) for t in planned.evidence_tiles] == [
        (t.dip_level, t.tile_rc) for t in ran.evidence_tiles
    ]
    if planned.preset_params["strategy"] == "focus":
        assert "upper bound" in planned.preset_params["run"]["plan"]
        assert p.vision_tokens_to_llm >= r.vision_tokens_to_llm
        return
    assert "plan" not in planned.preset_params["run"]
    assert p.vision_tokens_to_llm == r.vision_tokens_to_llm
    assert p.llm_prefill_tokens == r.llm_prefill_tokens
    if planned.preset_params["strategy"] in ("fastv", "pdrop"):
        assert (
            planned.preset_params["run"]["tokens_per_layer"]
            == ran.preset_params["run"]["tokens_per_layer"]
        )


@pytest.mark.parametrize(("preset", "overrides"), PLAN_CASES)
def test_plan_counts_equal_the_run(
    tiny_model: LoadedModel, large_pyramid: Pyramid, preset: str, overrides: dict[str, Any]
) -> None:
    engine = _engine(tiny_model, preset, **overrides)
    planned = engine.plan(large_pyramid, QUESTION)
    ran = _engine(tiny_model, preset, **overrides).answer(large_pyramid, QUESTION)
    assert_plan_equals_run(planned, ran)


@pytest.mark.parametrize("preset", ["default", "parity"])
def test_focus_plan_is_an_upper_bound(
    tiny_model: LoadedModel, large_pyramid: Pyramid, preset: str
) -> None:
    planned = _engine(tiny_model, preset).plan((2100, 1400), QUESTION)
    ran = _engine(tiny_model, preset, scorer=PlantedScorer(PLANTED_BOX)).answer(
        large_pyramid, QUESTION
    )
    assert "upper bound" in planned.preset_params["run"]["plan"]
    assert planned.scene.size_wh == (2100, 1400)
    assert planned.accounting.vision_tiles_encoded >= ran.accounting.vision_tiles_encoded
    assert planned.accounting.vision_tokens_to_llm >= ran.accounting.vision_tokens_to_llm
    assert planned.accounting.flops.total_flops > 0


# -- selection and pruning rules ---------------------------------------------------------------


def test_parity_selection_always_takes_the_right_column() -> None:
    plan = plan_pyramid(2100, 1400, config=DipConfig.preset("parity"))
    level, next_level = plan.level(1), plan.level(2)
    rows, cols = level.token_grid_hw
    scores = np.zeros((rows, cols), dtype=np.float32)
    scores[0, 0] = 1.0
    choice = select_tiles_parity(
        scores,
        np.zeros(rows, dtype=np.float32),
        np.ones((rows, cols), dtype=bool),
        level=level,
        next_level=next_level,
        ratio=0.25,
    )
    right = {(r, next_level.grid_hw[1] - 1) for r in range(next_level.grid_hw[0])}
    assert right <= set(choice.tiles_rc)
    assert choice.tiles_rc == sorted(choice.tiles_rc)


def test_ranked_selection_orders_by_mass_and_caps() -> None:
    plan = plan_pyramid(2100, 1400)
    level, next_level = plan.level(1), plan.level(2)
    rows, cols = level.token_grid_hw
    scores = np.full((rows, cols), 0.001, dtype=np.float32)
    scores[20:24, 30:36] = 1.0  # bottom right
    choice = select_tiles_ranked(
        scores,
        np.ones((rows, cols), dtype=bool),
        level=level,
        next_level=next_level,
        ratio=0.028,  # int(864 * 0.028) = 24: exactly the planted tokens
        tiles_cap=3,
        neighbour_expansion=1,
    )
    assert choice.n_selected_tokens == 24
    assert choice.tiles_rc == [(2, 3), (1, 2), (1, 3)]  # the mass tile, then its neighbours
    assert choice.mass[0] == pytest.approx(24.0) and choice.mass[1:] == [0.0, 0.0]


def test_prune_holds_the_allowance_and_keeps_the_best() -> None:
    scores = np.arange(60, dtype=np.float32).reshape(6, 10)
    valid = np.ones((6, 10), dtype=bool)
    free = prune_tokens(
        scores,
        None,
        valid,
        keep_ratio=0.25,
        newlines_in_ratio=False,
        keep_all_newlines=False,
        allowance=None,
    )
    assert free.keep.sum() == 15 and free.keep[-1].all()
    assert free.n_vision_tokens == 15 + 2
    tight = prune_tokens(
        scores,
        None,
        valid,
        keep_ratio=0.25,
        newlines_in_ratio=False,
        keep_all_newlines=True,
        allowance=8,
    )
    assert tight.n_vision_tokens <= 8 and tight.keep[-1, -1]
    parity = prune_tokens(
        scores,
        np.zeros(6, dtype=np.float32),
        valid,
        keep_ratio=0.25,
        newlines_in_ratio=True,
        keep_all_newlines=True,
        allowance=None,
    )
    assert parity.n_candidates == 66 and parity.keep.sum() == int(66 * 0.25)
    assert parity.newline_rows.all()


@pytest.mark.parametrize("mode", ["compact", "original"])
def test_position_modes_of_the_llm_and_the_rfm(
    tiny_model: LoadedModel, large_pyramid: Pyramid, mode: str
) -> None:
    scorer = PlantedScorer(PLANTED_BOX)
    requests: list[ScoreRequest] = []

    def recording(request: ScoreRequest) -> np.ndarray:
        requests.append(request)
        return scorer(request)

    engine = _engine(
        tiny_model, "default", position_mode=mode, rfm_position_mode=mode, scorer=recording
    )
    llm_input = engine.prepare(large_pyramid, QUESTION)
    positions = llm_input.position_ids[0].numpy()
    assert np.all(np.diff(positions) > 0) and positions[0] == 0
    gapped = positions[-1] > len(positions) - 1
    assert gapped == (mode == "original")  # pruning leaves gaps only in original positions
    if mode == "original":
        assert np.array_equal(positions, llm_input.sequence.positions)
    for request in requests[1:]:  # finer levels hold only the selected tiles' tokens
        rfm_positions = request.position_ids[0].numpy()
        assert (rfm_positions[-1] > len(rfm_positions) - 1) == (mode == "original")


def test_an_over_context_baseline_view_warns_only_when_running(
    tiny_model: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _engine(tiny_model, "full", max_zoom_steps=1)
    plan = plan_pyramid(2100, 1400, config=engine.dip_config)
    allowance = engine.thumbnail_tokens + 1  # far below any level's view
    with caplog.at_level("DEBUG", logger="lrs_core.focus.views"):
        engine.baseline_level(plan, allowance, dry_run=True)
        engine.baseline_level(plan, allowance)
    over = [r for r in caplog.records if "left in the context" in r.getMessage()]
    assert [r.levelname for r in over] == ["DEBUG", "WARNING"]
