"""The per-process engine cache and the model name resolver."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrs_core.batch.engines import cached_engine, model_fingerprint
from lrs_core.errors import WeightsError
from lrs_core.models.loading.registry import resolve_model_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_engine_cache_reuses_and_reloads_a_changed_model(tiny_model_dir: Path) -> None:
    engine, lock = cached_engine(str(tiny_model_dir), preset="thumbnail")
    again, same_lock = cached_engine(str(tiny_model_dir), preset="thumbnail")
    assert again is engine and same_lock is lock
    other, _ = cached_engine(str(tiny_model_dir), preset="default")
    assert other is not engine and other.config.preset == "default"
    assert model_fingerprint(str(tiny_model_dir)) != ()
    with pytest.raises(WeightsError):
        cached_engine(str(tiny_model_dir.parent / "no-model-here"))


def test_model_names_and_paths_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_model_dir(tmp_path) == tmp_path
    assert resolve_model_dir(str(tmp_path / "missing")) == tmp_path / "missing"  # loader says why
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    assert resolve_model_dir("here") == Path("here")
    with pytest.raises(WeightsError, match="'atlas' is neither a model directory nor a known"):
        resolve_model_dir("atlas")
    assert resolve_model_dir("world").name == "weights"  # the shipped model (tests/lrs_core/world)
