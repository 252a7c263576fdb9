"""Evidence stays on data: zoom tiles in a nodata collar are not chosen; heat is masked."""

from __future__ import annotations

import numpy as np
import pytest

from lrs_core.errors import ConfigError
from lrs_core.focus.engine import FocusConfig, FocusEngine
from lrs_core.focus.nodata import valid_share
from lrs_core.models.loading.loaded import LoadedModel
from lrs_core.raster.ingest import IngestConfig, ingest_scene
from lrs_core.raster.pyramid import Pyramid, open_pyramid
from tests.fixtures.focus_scenes import LARGE_SCENE_HEIGHT_PX, LARGE_SCENE_WIDTH_PX
from tests.fixtures.scenes import make_rgb_pattern, write_geotiff
from tests.lrs_core.focus.test_engine import PlantedScorer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The left COLLAR_PX columns of the scene hold no data.
COLLAR_PX = 800
#: Attention is planted inside the collar.
PLANTED_IN_COLLAR = (200.0, 600.0, 260.0, 660.0)


@pytest.fixture(scope="module")
def collar_pyramid(tmp_path_factory: pytest.TempPathFactory) -> Pyramid:
    root = tmp_path_factory.mktemp("collar")
    pixels = make_rgb_pattern(LARGE_SCENE_HEIGHT_PX, LARGE_SCENE_WIDTH_PX, seed=2)
    pixels[:, :, :COLLAR_PX] = 0
    source = write_geotiff(root / "collar.tif", pixels, nodata=0)
    result = ingest_scene(source, root / "stores", config=IngestConfig(chunk_px=512, n_workers=1))
    assert result.store is not None
    return open_pyramid(result.store)


def _answer(loaded: LoadedModel, pyramid: Pyramid, **overrides: object):  # type: ignore[no-untyped-def]
    config = FocusConfig.from_preset("default", max_new_tokens=2, tiles_cap=4, **overrides)
    engine = FocusEngine(loaded, config=config, scorer=PlantedScorer(PLANTED_IN_COLLAR))
    return engine.answer(pyramid, "Where is the ship?")


def test_valid_share_of_collar_and_data(collar_pyramid: Pyramid) -> None:
    assert valid_share(collar_pyramid, (0.0, 0.0, 700.0, 700.0)) == 0.0
    assert valid_share(collar_pyramid, (900.0, 0.0, 1500.0, 700.0)) == 1.0
    assert valid_share(collar_pyramid, (400.0, 0.0, 1200.0, 700.0)) == pytest.approx(0.5, abs=0.02)


def test_tiles_in_nodata_are_not_chosen_and_heat_is_masked(
    tiny_model: LoadedModel, collar_pyramid: Pyramid
) -> None:
    record = _answer(tiny_model, collar_pyramid)
    final = [t for t in record.evidence_tiles if t.is_final]
    assert final and max(t.dip_level for t in final) > 1  # it zoomed
    for tile in record.evidence_tiles:
        assert valid_share(collar_pyramid, tile.bbox_px) >= 1 - FocusConfig().loop.max_nodata_share
    for token in record.evidence_tokens:
        assert token.bbox_px[2] > COLLAR_PX
    assert record.heatmap is not None
    rows, cols = record.heatmap.shape_hw
    heat = np.asarray(record.heatmap.values).reshape(rows, cols)
    collar_cols = int(COLLAR_PX / (LARGE_SCENE_WIDTH_PX / cols))  # cells wholly in the collar
    assert not heat[:, :collar_cols].any() and heat[:, collar_cols + 1 :].any()


def test_the_rule_can_be_switched_off(tiny_model: LoadedModel, collar_pyramid: Pyramid) -> None:
    record = _answer(tiny_model, collar_pyramid, max_nodata_share=1.0)
    final = [t for t in record.evidence_tiles if t.is_final]
    best = max(final, key=lambda t: t.score)
    assert best.bbox_px[0] < COLLAR_PX  # attention alone picks the collar


def test_config_field_is_validated_and_parity_disables_it() -> None:
    assert FocusConfig.from_preset("parity").loop.max_nodata_share == 1.0
    assert 0 < FocusConfig().loop.max_nodata_share < 1
    with pytest.raises(ConfigError, match="max_nodata_share"):
        FocusConfig.from_preset("default", max_nodata_share=0.0)
    assert FocusConfig.from_dict(FocusConfig().to_dict()) == FocusConfig()
