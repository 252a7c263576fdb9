"""Tests of the tile feature cache: LRU bounds, persistence, and cached == recomputed features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lrs_core.dip.plan import plan_pyramid
from lrs_core.errors import ConfigError
from lrs_core.focus.engine import FocusConfig, FocusEngine, grid_level
from lrs_core.focus.features import FEATURES_DIR, FeatureCache, FeatureKey
from lrs_core.focus.tiles import read_tiles
from lrs_core.models.loading.loaded import LoadedModel
from lrs_core.raster.pyramid import open_pyramid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _key(row: int, col: int = 0) -> FeatureKey:
    return FeatureKey(
        scene_key="scene:abc",
        model_key="m@float32",
        view_key="antialiased-336-1008x1008",
        dip_level=1,
        tile_rc=(row, col),
    )


def test_lru_evicts_by_bytes_and_counts() -> None:
    tensor = torch.zeros(4, 8)  # 128 bytes
    cache = FeatureCache(capacity_bytes=300)
    cache.put(_key(0), tensor)
    cache.put(_key(1), tensor + 1)
    assert cache.get(_key(0)) is not None  # 0 is now the most recent
    cache.put(_key(2), tensor + 2)  # evicts 1, the least recent
    assert _key(1) not in cache and _key(0) in cache and _key(2) in cache
    assert cache.size_bytes == 256
    assert cache.get(_key(1)) is None
    assert (cache.hits, cache.misses) == (1, 1)
    cache.put(_key(3), torch.zeros(100, 8))  # larger than the whole cache: not held
    assert _key(3) not in cache
    with pytest.raises(ConfigError, match="capacity_bytes"):
        FeatureCache(capacity_bytes=-1)


def test_persisted_features_round_trip_and_are_never_rewritten(tmp_path: Path) -> None:
    store = tmp_path / "scene.zarr"
    store.mkdir()
    writer = FeatureCache(persist=True)
    tensor = torch.arange(24, dtype=torch.float32).reshape(3, 8)
    writer.put(_key(0, 1), tensor, store=store)
    path = store / FEATURES_DIR / _key(0, 1).relative_path()
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))
    stamp = path.stat().st_mtime_ns
    writer.put(_key(0, 1), tensor + 1, store=store)
    assert path.stat().st_mtime_ns == stamp
    reader = FeatureCache(persist=True)
    loaded = reader.get(_key(0, 1), store=store)
    assert loaded is not None and torch.equal(loaded, tensor)
    assert reader.hits == 1
    assert FeatureCache().get(_key(0, 1), store=store) is None  # persistence off: memory only


def test_cached_features_equal_recomputed(tiny_model: LoadedModel, large_store: Path) -> None:
    pyramid = open_pyramid(large_store)
    cache = FeatureCache()
    engine = FocusEngine(
        tiny_model, config=FocusConfig.from_preset("grid-3", max_new_tokens=1), feature_cache=cache
    )
    first = engine.answer(pyramid, "Is there a bridge over the river?")
    second = engine.answer(pyramid, "Where is the airport runway?")
    assert first.accounting.vision_tiles_cached == 0
    assert second.accounting.vision_tiles_encoded == 0
    assert second.accounting.vision_tiles_cached == first.accounting.vision_tiles_encoded
    assert cache.hits == first.accounting.vision_tiles_encoded
    tiles = [t.tile_rc for t in first.evidence_tiles]
    level = grid_level((1400, 2100), 3, config=engine.dip_config)
    assert level.grid_hw == (2, 3) and len(tiles) == 6
    model = tiny_model.model
    with torch.inference_mode():
        fresh = model.encode_tiles(model.preprocess_tiles(read_tiles(pyramid, level, tiles)))
    for index, tile in enumerate(tiles):
        key = FeatureKey(
            scene_key=engine.executor.scene_key(pyramid),
            model_key=engine.executor.model_key(),
            view_key=f"antialiased-336-{level.resize_hw[0]}x{level.resize_hw[1]}",
            dip_level=1,
            tile_rc=tile,
        )
        cached = cache.get(key)
        assert cached is not None
        torch.testing.assert_close(cached, fresh[index], rtol=1e-5, atol=1e-6)
    assert plan_pyramid(2100, 1400).n_levels == 3


def test_engines_share_a_cache_across_presets(tiny_model: LoadedModel, large_store: Path) -> None:
    pyramid = open_pyramid(large_store)
    cache = FeatureCache()
    full = FocusEngine(
        tiny_model,
        config=FocusConfig.from_preset("full", max_zoom_steps=0, max_new_tokens=1),
        feature_cache=cache,
    )
    thumb = FocusEngine(
        tiny_model,
        config=FocusConfig.from_preset("thumbnail", max_new_tokens=1),
        feature_cache=cache,
    )
    full.answer(pyramid, "What is red?")
    record = thumb.answer(pyramid, "What is red?")
    assert (record.accounting.vision_tiles_encoded, record.accounting.vision_tiles_cached) == (0, 1)
