"""Tests of the Dynamic Image Pyramid geometry (spec §1.2–1.6, §2.3, §5.2)."""

from __future__ import annotations

import collections
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lrs_core.dip.plan import (
    DipConfig,
    DipLevel,
    DipPlan,
    PyramidRule,
    map_tokens_to_next_level_parity,
    map_tokens_to_tiles,
    plan_pyramid,
    unpadded_token_grid_hw,
)
from lrs_core.errors import ConfigError, GeometryError

PARITY = DipConfig.preset("parity")
DEFAULT = DipConfig.preset("default")
SIZES_FILE = Path(__file__).parents[1] / "data" / "lrs_vqa_image_sizes.json"
#: The full LRS-VQA question file, when this checkout sits beside the shared data folder.
LRS_VQA_JSONL = Path(
    os.environ.get(
        "LRS_VQA_JSONL",
        Path(__file__).resolve().parents[4] / "shared" / "data" / "LRS_VQA_merged.jsonl",
    )
)


def lrs_vqa_sizes() -> list[tuple[int, int, int]]:
    """(W, H, number of questions) for every distinct image size of LRS-VQA."""
    data = json.loads(SIZES_FILE.read_text())
    return [(w, h, n) for w, h, n in data["sizes"]]


# -- spec §1.6 worked examples -----------------------------------------------------------------

WORKED_EXAMPLES = [
    # (W, H, thumbnail hw, [(resize_hw, grid_hw), ...] (None = not listed), L1 tokens, L2 canvas)
    (
        4000,
        4000,
        (336, 336),
        [((1008, 1008), (3, 3)), ((2016, 2016), (6, 6)), ((4032, 4032), (12, 12))],
        (36, 37),
        (72, 73),
    ),
    (
        7099,
        6329,
        (300, 336),
        [
            ((899, 1008), (3, 3)),
            ((1680, 1885), (5, 6)),
            ((3294, 3696), (10, 11)),
            ((6384, 7161), (19, 22)),
        ],
        (32, 37),
        (60, 68),
    ),
    (
        27328,
        25207,
        (310, 336),
        [
            ((930, 1008), (3, 3)),
            ((1680, 1822), (5, 6)),
            None,
            None,
            None,
            ((25414, 27552), (76, 82)),
        ],
        (33, 37),
        (60, 66),
    ),
    (
        2100,
        1400,
        (224, 336),
        [((672, 1008), (2, 3)), ((896, 1344), (3, 4)), ((1568, 2352), (5, 7))],
        (24, 37),
        (32, 49),
    ),
    (1000, 800, (269, 336), [((806, 1008), (3, 3))], (28, 37), None),
]


@pytest.mark.parametrize(
    ("width", "height", "thumb", "levels", "l1_tokens", "l2_canvas"), WORKED_EXAMPLES
)
def test_parity_matches_spec_worked_examples(width, height, thumb, levels, l1_tokens, l2_canvas):
    plan = plan_pyramid(width, height, config=PARITY)
    assert plan.image_hw == (height, width)
    assert plan.thumbnail.resize_hw == thumb
    assert plan.thumbnail.canvas_hw == (336, 336)
    assert plan.thumbnail.tokens == 576
    assert len(plan.levels) == len(levels)
    for level, expected in zip(plan.levels, levels, strict=True):
        if expected is not None:
            assert (level.resize_hw, level.grid_hw) == expected
    assert [level.dip_level for level in plan.levels] == list(range(1, len(levels) + 1))
    first = plan.levels[0]
    assert first.token_grid_with_newline_hw == l1_tokens
    assert first.n_tokens == l1_tokens[0] * l1_tokens[1]
    if l2_canvas is not None:
        assert plan.levels[1].token_grid_with_newline_hw == l2_canvas


def test_spec_example_token_counts():
    assert plan_pyramid(4000, 4000, config=PARITY).levels[0].n_tokens == 1332
    assert plan_pyramid(7099, 6329, config=PARITY).levels[0].n_tokens == 1184


def test_scale_info_fields_match_reference_meaning():
    level = plan_pyramid(7099, 6329, config=PARITY).levels[1]
    assert level.padded_hw == (5 * 336, 6 * 336)
    assert level.resize_ratio_hw == (1680 / 6329, 1885 / 7099)
    assert level.n_tiles == 30
    assert level.token_canvas_hw == (60, 72)


# -- every LRS-VQA image size ------------------------------------------------------------------


def _check_level_consistency(plan: DipPlan) -> None:
    height, width = plan.image_hw
    side = plan.config.tile_size_px
    per_tile = plan.config.tokens_per_tile_side
    previous_long = 0
    for level in plan.levels:
        rh, rw = level.resize_hw
        rows, cols = level.grid_hw
        # the grid covers the resized image, with less than one tile of padding per axis
        assert (rows - 1) * side < rh <= rows * side
        assert (cols - 1) * side < rw <= cols * side
        # fill-to-grid: the limiting side fills its tiles exactly
        assert rh == rows * side or rw == cols * side
        # one scale for both axes, up to the two roundings (each at most 0.5 px before/after the
        # fill-to-grid upscale s)
        fill = max(rh / (height * level.ratio), rw / (width * level.ratio)) * 1.01
        tolerance = (0.5 * fill + 0.5) * (1 / height + 1 / width)
        assert abs(rh / height - rw / width) <= tolerance
        # the token grid is the canvas trimmed on one side only, by at most one tile (exactly one
        # when the last tile row/column holds less than one token of content)
        ht, wt = level.token_grid_hw
        canvas_h, canvas_w = level.token_canvas_hw
        assert (ht == canvas_h and canvas_w - per_tile <= wt <= canvas_w) or (
            wt == canvas_w and canvas_h - per_tile <= ht <= canvas_h
        )
        assert level.long_side_px >= previous_long
        previous_long = level.long_side_px
    assert plan.levels[0].long_side_px == min(
        plan.config.base_long_side_px, _fill(max(height, width))
    )
    assert max(plan.thumbnail.resize_hw) == side


def _fill(long_side: int) -> int:
    return math.ceil(long_side / 336) * 336


def test_committed_sizes_match_the_lrs_vqa_file():
    if not LRS_VQA_JSONL.is_file():
        pytest.skip(f"{LRS_VQA_JSONL} is absent; set LRS_VQA_JSONL to check the committed sizes")
    counts = collections.Counter()
    with LRS_VQA_JSONL.open() as handle:
        for line in handle:
            width, height = json.loads(line)["image_size"]
            counts[(width, height)] += 1
    assert sorted((w, h, n) for (w, h), n in counts.items()) == sorted(lrs_vqa_sizes())


def test_every_lrs_vqa_size_is_consistent_and_matches_spec_statistics():
    sizes = lrs_vqa_sizes()
    assert len(sizes) == 507
    assert sum(n for _, _, n in sizes) == 7333
    tiled_levels: collections.Counter[int] = collections.Counter()
    level1_tiles: collections.Counter[int] = collections.Counter()
    ratios: list[float] = []
    below_125 = exactly_1 = 0
    level2_long_max = 0
    level2_tiles: list[int] = []
    for width, height, questions in sizes:
        plan = plan_pyramid(width, height, config=PARITY)
        _check_level_consistency(plan)
        _check_level_consistency(plan_pyramid(width, height, config=DEFAULT))
        tiled_levels[plan.n_levels] += questions
        level1_tiles[plan.levels[0].n_tiles] += questions
        second = plan.levels[1]
        ratio = second.long_side_px / plan.levels[0].long_side_px
        ratios += [ratio] * questions
        below_125 += questions * (ratio < 1.25)
        exactly_1 += questions * (ratio == 1)
        level2_long_max = max(level2_long_max, second.long_side_px)
        level2_tiles += [second.n_tiles] * questions
    # spec §1.2 and §1.5, all per question
    assert tiled_levels == {2: 313, 3: 1173, 4: 3314, 5: 1968, 6: 565}
    assert level1_tiles == {9: 5978, 6: 1327, 3: 28}
    assert below_125 == 403
    assert exactly_1 == 14
    assert level2_long_max <= 2016
    assert min(ratios) == 1.0 and max(ratios) == 2.0
    assert round(float(np.median(ratios)), 2) == 1.56
    assert min(level2_tiles) == 4 and max(level2_tiles) == 36
    assert round(sum(level2_tiles) / len(level2_tiles), 1) == 20.6


def test_identical_levels_example_kept_by_parity_and_dropped_by_default():
    parity = plan_pyramid(2391, 4033, config=PARITY)
    assert parity.levels[0].resize_hw == parity.levels[1].resize_hw == (1008, 598)
    default = plan_pyramid(2391, 4033, config=DEFAULT)
    assert [lv.resize_hw for lv in default.levels] == [(1008, 598), (2016, 1196), (4368, 2590)]


def test_default_drops_near_duplicates_keeping_base_and_original():
    for width, height, _ in lrs_vqa_sizes():
        parity = plan_pyramid(width, height, config=PARITY)
        default = plan_pyramid(width, height, config=DEFAULT)
        assert default.levels[0].resize_hw == parity.levels[0].resize_hw
        assert default.levels[-1].resize_hw == parity.levels[-1].resize_hw
        assert default.levels[-1].ratio == 1.0
        assert {lv.resize_hw for lv in default.levels} <= {lv.resize_hw for lv in parity.levels}
        longs = [lv.long_side_px for lv in default.levels]
        for index in range(1, len(longs) - 1):
            assert longs[index] / longs[index - 1] >= DEFAULT.min_level_ratio
            assert longs[-1] / longs[index] >= DEFAULT.min_level_ratio


def test_default_min_level_ratio_is_configurable():
    loose = plan_pyramid(2100, 1400, config=DipConfig.preset("default", min_level_ratio=1.0))
    strict = plan_pyramid(2100, 1400, config=DipConfig.preset("default", min_level_ratio=1.5))
    assert [lv.long_side_px for lv in loose.levels] == [1008, 1344, 2352]
    assert [lv.long_side_px for lv in strict.levels] == [1008, 2352]


def test_parity_unpads_level1_against_the_scene_and_finer_levels_against_resize():
    # 74 LRS-VQA questions have a level-1 token grid that depends on the basis; find one.
    for width, height, _ in lrs_vqa_sizes():
        parity = plan_pyramid(width, height, config=PARITY).levels[0]
        default = plan_pyramid(width, height, config=DEFAULT).levels[0]
        if parity.token_grid_hw != default.token_grid_hw:
            break
    else:  # pragma: no cover - the data has such sizes
        pytest.fail("no size where the unpad basis matters")
    assert parity.token_grid_hw == unpadded_token_grid_hw(parity.token_canvas_hw, (height, width))
    assert default.token_grid_hw == unpadded_token_grid_hw(
        default.token_canvas_hw, default.resize_hw
    )


def test_unpad_rule_uses_int_truncation():
    # spec §1.6 7099x6329 level 1: int(6329 * (36 / 7099)) = int(32.09...) = 32 rows
    assert unpadded_token_grid_hw((36, 36), (6329, 7099)) == (32, 36)
    # taller than wide trims columns
    assert unpadded_token_grid_hw((36, 36), (7099, 6329)) == (36, 32)


# -- small and odd sizes -----------------------------------------------------------------------


def test_small_scene_has_one_tiled_level():
    plan = plan_pyramid(1000, 800, config=PARITY)
    assert plan.n_levels == 1 and plan.levels[0].ratio == 1.0


@pytest.mark.parametrize("rule", list(PyramidRule))
@pytest.mark.parametrize(
    ("width", "height"), [(336, 200), (100, 50), (1, 1), (5000, 3), (336, 336)]
)
def test_tiny_and_extreme_sizes_still_plan(rule, width, height):
    plan = plan_pyramid(width, height, config=DipConfig(rule=rule))
    assert plan.n_levels >= 1
    assert max(plan.thumbnail.resize_hw) == 336
    assert min(plan.thumbnail.resize_hw) >= 1
    for level in plan.levels:
        assert level.token_grid_hw[0] >= 1 and level.token_grid_hw[1] >= 1


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, -1), (10.5, 10), (True, 10)])
def test_bad_sizes_raise_geometry_error(width, height):
    with pytest.raises(GeometryError, match="must be a positive integer"):
        plan_pyramid(width, height)


# -- config ------------------------------------------------------------------------------------


def test_config_presets_and_round_trip():
    assert DipConfig.preset("parity").rule is PyramidRule.PARITY
    assert DipConfig().rule is PyramidRule.DEFAULT
    config = DipConfig.preset("default", min_level_ratio=1.4)
    assert DipConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.token_size_px == 28 and config.pool_stride == 2 and config.thumbnail_tokens == 576


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"tile_size_px": 0}, "tile_size_px"),
        ({"tile_size_px": 330}, "tile_size_px"),
        ({"tokens_per_tile_side": 7}, "tokens_per_tile_side"),
        ({"base_long_side_px": 100}, "base_long_side_px"),
        ({"min_level_ratio": 0.9}, "min_level_ratio"),
        ({"min_level_ratio": float("nan")}, "min_level_ratio"),
        ({"rule": "fancy"}, "rule"),
    ],
)
def test_config_validation(overrides, field):
    with pytest.raises(ConfigError, match=field):
        DipConfig(**overrides)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="does not exist"):
        DipConfig.preset("fancy")


def test_plan_to_dict_is_json():
    data = json.loads(json.dumps(plan_pyramid(7099, 6329, config=PARITY).to_dict()))
    assert data["thumbnail"] == {
        "ratio": 336 / 7099,
        "resize_hw": [300, 336],
        "canvas_hw": [336, 336],
        "tokens": 576,
    }
    assert data["levels"][0]["token_grid_with_newline_hw"] == [32, 37]
    assert data["config"]["rule"] == "parity"


# -- maps --------------------------------------------------------------------------------------


def _all_tokens(level: DipLevel, *, newline: bool) -> np.ndarray:
    rows, cols = level.token_grid_with_newline_hw if newline else level.token_grid_hw
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=1)


@pytest.mark.parametrize(
    ("width", "height"), [(w, h) for w, h, *_ in WORKED_EXAMPLES] + [(2391, 4033)]
)
def test_parity_map_equals_torch_index_arithmetic(width, height):
    plan = plan_pyramid(width, height, config=PARITY)
    level = plan.levels[0]
    nxt = plan.levels[1] if plan.n_levels > 1 else plan.levels[0]
    tokens = _all_tokens(level, newline=True)
    # The reference: flat indices over (Ht, Wt+1), div/mod, then long * python float, floor.
    ht, wt1 = level.token_grid_with_newline_hw
    flat = torch.as_tensor(tokens[:, 0] * wt1 + tokens[:, 1])
    r2d = torch.div(flat, wt1, rounding_mode="floor")
    c2d = torch.remainder(flat, wt1)
    hb, wb = nxt.grid_hw
    expected = torch.stack(
        [torch.floor(r2d * (hb / ht)).long(), torch.floor(c2d * (wb / wt1)).long()], dim=1
    ).numpy()
    got = map_tokens_to_next_level_parity(tokens, level, nxt)
    np.testing.assert_array_equal(got, expected)


def test_parity_map_selects_the_rightmost_tile_column_through_newlines():
    plan = plan_pyramid(7099, 6329, config=PARITY)
    level, nxt = plan.levels[0], plan.levels[1]
    ht, wt = level.token_grid_hw
    newline_tokens = np.stack([np.arange(ht), np.full(ht, wt)], axis=1)
    tiles = {tuple(t) for t in map_tokens_to_next_level_parity(newline_tokens, level, nxt)}
    hb, wb = nxt.grid_hw
    assert tiles == {(r, wb - 1) for r in range(hb)}
    # ours rejects newline tokens: they have no footprint
    with pytest.raises(GeometryError, match="newline"):
        map_tokens_to_tiles(newline_tokens, level, nxt)


def test_footprint_map_differs_from_parity_where_spec_says():
    # 2100x1400: level 1 is 24x36 tokens (+ newline), level 2 has 3x4 tiles. Footprints split the
    # 36 token columns evenly (9 per tile column); the reference divides by Wt + 1 = 37, which
    # shifts columns left and leaves the last tile column only 8 image tokens (plus the newline).
    plan = plan_pyramid(2100, 1400, config=PARITY)
    level, nxt = plan.levels[0], plan.levels[1]
    tokens = _all_tokens(level, newline=False)
    ours = map_tokens_to_tiles(tokens, level, nxt)
    parity = map_tokens_to_next_level_parity(tokens, level, nxt)
    first_row = tokens[:, 0] == 0
    assert np.bincount(ours[first_row, 1]).tolist() == [9, 9, 9, 9]
    assert np.bincount(parity[first_row, 1]).tolist() == [10, 9, 9, 8]
    assert tuple(ours[9]) == (0, 1) and tuple(parity[9]) == (0, 0)
    assert set(map(tuple, ours)) == {(r, c) for r in range(3) for c in range(4)}


def test_map_tokens_to_tiles_example():
    plan = plan_pyramid(4000, 4000, config=DEFAULT)
    level, nxt = plan.levels[0], plan.levels[1]  # 36x36 tokens -> 6x6 tiles
    got = map_tokens_to_tiles([[0, 0], [5, 6], [35, 35], [17, 18]], level, nxt)
    np.testing.assert_array_equal(got, [[0, 0], [0, 1], [5, 5], [2, 3]])
    assert map_tokens_to_tiles(np.empty((0, 2), dtype=np.int64), level, nxt).shape == (0, 2)


def test_map_errors():
    plan = plan_pyramid(4000, 4000, config=DEFAULT)
    level = plan.levels[0]
    with pytest.raises(GeometryError, match="shape"):
        map_tokens_to_tiles([1, 2, 3], level, level)
    with pytest.raises(GeometryError, match="dtype"):
        map_tokens_to_tiles([[0.5, 1.0]], level, level)
    with pytest.raises(GeometryError, match="outside"):
        map_tokens_to_next_level_parity([[0, 38]], level, plan.levels[1])
    other = plan_pyramid(4001, 4000, config=DEFAULT).levels[0]
    with pytest.raises(GeometryError, match="different scenes"):
        map_tokens_to_tiles([[0, 0]], level, other)


def test_level_lookup_and_index_errors():
    plan = plan_pyramid(4000, 4000, config=DEFAULT)
    assert plan.level(2) is plan.levels[1]
    with pytest.raises(GeometryError, match="dip_level 4"):
        plan.level(4)
    level = plan.levels[0]
    with pytest.raises(GeometryError, match="tile_rc"):
        level.tile_bbox_px((3, 0))
    with pytest.raises(GeometryError, match="grid_rc"):
        level.token_bbox_px((0, 36))
    with pytest.raises(GeometryError, match="finite"):
        level.tiles_covering((0, 0, float("inf"), 1))
    with pytest.raises(GeometryError, match="x1 < x0"):
        level.tiles_covering((5, 0, 1, 1))


def test_bboxes_example():
    level = plan_pyramid(7099, 6329, config=PARITY).levels[0]  # 899 x 1008 in 3x3 tiles
    assert level.tile_full_bbox_px((0, 0)) == (0.0, 0.0, 336 * 7099 / 1008, 336 * 6329 / 899)
    x0, y0, x1, y1 = level.tile_full_bbox_px((2, 2))
    assert y1 > 6329 and x1 == 7099.0  # bottom row is partly padding; right column fills exactly
    assert level.tile_bbox_px((2, 2)) == (x0, y0, 7099.0, 6329.0)
    assert level.tile_content_hw((2, 2)) == (899 - 672, 336)
    assert level.tiles_covering((0, 0, 7099, 6329)) == {(r, c) for r in range(3) for c in range(3)}
    assert level.tiles_covering((7099, 6329, 7099, 6329)) == {(2, 2)}
    assert level.tiles_covering((8000, 0, 9000, 10)) == set()
    assert level.tokens_of_tile((2, 0))[-1] == (31, 11)  # 32 unpadded token rows


# -- hypothesis properties ---------------------------------------------------------------------

scene_sides = st.integers(min_value=1, max_value=30_000)
rules = st.sampled_from(list(PyramidRule))


def _edges(level: DipLevel, axis: int) -> list[float]:
    n = level.grid_hw[axis]
    if axis == 0:
        return [level.tile_full_bbox_px((r, 0))[1] for r in range(n)] + [
            level.tile_full_bbox_px((n - 1, 0))[3]
        ]
    return [level.tile_full_bbox_px((0, c))[0] for c in range(n)] + [
        level.tile_full_bbox_px((0, n - 1))[2]
    ]


@settings(max_examples=60, deadline=None)
@given(width=scene_sides, height=scene_sides, rule=rules)
def test_tile_grids_cover_each_level_exactly_once(width, height, rule):
    plan = plan_pyramid(width, height, config=DipConfig(rule=rule))
    for level in plan.levels:
        for axis, extent in ((0, height), (1, width)):
            edges = _edges(level, axis)
            assert edges[0] == 0.0
            # strictly increasing edges: no overlap, no gap
            assert all(a < b for a, b in zip(edges[:-1], edges[1:], strict=True))
            # the in-scene parts end exactly at the scene edge; only the last tile has padding
            assert edges[-2] < extent <= edges[-1] + 1e-9 * extent
        # clipped tile areas sum to the scene area (they tile it without overlap)
        rows, cols = level.grid_hw
        col_w = np.diff(np.minimum(_edges(level, 1), width))
        row_h = np.diff(np.minimum(_edges(level, 0), height))
        assert np.all(col_w > 0) and np.all(row_h > 0)
        assert math.isclose(col_w.sum() * row_h.sum(), width * height, rel_tol=1e-12)
        # each tile's clipped box matches the edges, and a few boxes round-trip to their tile
        rng = np.random.default_rng(width * 31 + height)
        for r, c in zip(rng.integers(0, rows, 8), rng.integers(0, cols, 8), strict=True):
            box = level.tile_bbox_px((int(r), int(c)))
            assert level.tiles_covering(box) == {(int(r), int(c))}
            assert box[2] - box[0] == pytest.approx(col_w[c])
            assert box[3] - box[1] == pytest.approx(row_h[r])


@settings(max_examples=60, deadline=None)
@given(width=scene_sides, height=scene_sides, rule=rules, seed=st.integers(0, 2**32 - 1))
def test_token_maps_land_inside_grids_and_agree_with_footprints(width, height, rule, seed):
    plan = plan_pyramid(width, height, config=DipConfig(rule=rule))
    rng = np.random.default_rng(seed)
    for index, level in enumerate(plan.levels):
        nxt = plan.levels[min(index + 1, plan.n_levels - 1)]
        ht, wt = level.token_grid_hw
        tokens = np.stack([rng.integers(0, ht, 40), rng.integers(0, wt, 40)], axis=1)
        with_newline = np.concatenate([tokens, [[ht - 1, wt], [0, wt]]])
        for tiles in (
            map_tokens_to_tiles(tokens, level, nxt),
            map_tokens_to_next_level_parity(with_newline, level, nxt),
        ):
            assert tiles.dtype == np.int64
            assert np.all(tiles >= 0)
            assert np.all(tiles < np.asarray(nxt.grid_hw))
        same_level = map_tokens_to_tiles(tokens, level, level)
        for (r, c), tile in zip(tokens, same_level, strict=True):
            assert tuple(tile) == level.tile_of_token((r, c))
            assert (r, c) in level.tokens_of_tile(tuple(tile))
            box = level.token_bbox_px((r, c))
            assert box[0] < box[2] and box[1] < box[3]
            # the token's footprint lies inside its tile's box and maps back to that tile
            tile_box = level.tile_bbox_px(tuple(tile))
            assert tile_box[0] <= box[0] and box[2] <= tile_box[2]
            assert tile_box[1] <= box[1] and box[3] <= tile_box[3]
            assert level.tiles_covering(box) == {tuple(tile)}
        # the footprint map sends a token to the next-level tile holding its footprint centre
        for (r, c), tile in zip(tokens, map_tokens_to_tiles(tokens, level, nxt), strict=True):
            x0, y0, x1, y1 = level.token_bbox_px((r, c))
            centre = ((x0 + x1) / 2, (y0 + y1) / 2)
            if centre[0] < width and centre[1] < height:
                hits = nxt.tiles_covering((centre[0], centre[1], centre[0], centre[1]))
                assert hits == {tuple(tile)} or _near_edge(nxt, centre)


def _near_edge(level: DipLevel, centre: tuple[float, float]) -> bool:
    """True when a point sits within float noise of a tile edge (either tile is then right)."""
    edges_x, edges_y = _edges(level, 1), _edges(level, 0)
    return (
        min(abs(centre[0] - e) for e in edges_x) < 1e-6
        or min(abs(centre[1] - e) for e in edges_y) < 1e-6
    )


@settings(max_examples=30, deadline=None)
@given(width=st.integers(1, 9000), height=st.integers(1, 9000), rule=rules)
def test_tokens_of_tiles_partition_the_token_grid(width, height, rule):
    plan = plan_pyramid(width, height, config=DipConfig(rule=rule))
    level = plan.levels[0]
    seen = collections.Counter()
    for r in range(level.grid_hw[0]):
        for c in range(level.grid_hw[1]):
            seen.update(level.tokens_of_tile((r, c)))
    ht, wt = level.token_grid_hw
    assert set(seen) == {(r, c) for r in range(ht) for c in range(wt)}
    assert set(seen.values()) == {1}


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_json_prints_the_plan():
    from typer.testing import CliRunner

    from lrs_core.cli import build_app

    result = CliRunner().invoke(
        build_app(), ["dip", "7099", "6329", "--preset", "parity", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["thumbnail"]["resize_hw"] == [300, 336]
    levels = [(lv["resize_hw"], lv["grid_hw"]) for lv in data["levels"]]
    assert levels == [
        ([899, 1008], [3, 3]),
        ([1680, 1885], [5, 6]),
        ([3294, 3696], [10, 11]),
        ([6384, 7161], [19, 22]),
    ]
    assert [lv["token_grid_with_newline_hw"] for lv in data["levels"][:2]] == [[32, 37], [60, 68]]
    assert data["levels"][0]["ratio"] == pytest.approx(1008 / 7099)


def test_cli_table_and_usage_errors():
    from typer.testing import CliRunner

    from lrs_core.cli import build_app

    runner = CliRunner()
    result = runner.invoke(build_app(), ["dip", "2391", "4033"])
    assert result.exit_code == 0, result.output
    assert "1008 x 598" in result.stdout and "2016 x 1196" in result.stdout
    assert "thumbnail" in result.stdout
    parity = runner.invoke(build_app(), ["dip", "2391", "4033", "--preset", "parity"])
    assert parity.stdout.count("1008 x 598") == 2  # the identical levels the reference keeps
    assert runner.invoke(build_app(), ["dip", "10", "10", "--preset", "fancy"]).exit_code == 2
    assert runner.invoke(build_app(), ["dip", "0", "10"]).exit_code == 2
    bad_ratio = runner.invoke(build_app(), ["dip", "10", "10", "--min-level-ratio", "0.5"])
    assert bad_ratio.exit_code == 2


def test_dip_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, lrs_core.dip.plan; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
