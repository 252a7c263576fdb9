"""``--model world``: the shipped model resolves and loads; a missing one names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrs_core.errors import WeightsError
from lrs_core.models.loading import registry
from lrs_core.models.loading.auto import load_model
from lrs_core.models.loading.registry import KNOWN_MODELS, resolve_model_dir

#: The issue's cap on the committed weights.
MAX_WEIGHTS_BYTES = 30 * 2**20


def test_world_resolves_to_the_packaged_weights() -> None:
    weights_dir = KNOWN_MODELS["world"]
    assert resolve_model_dir("world") == weights_dir
    assert weights_dir.parent.name == "world" and weights_dir.is_dir()
    loaded = load_model("world", device="cpu")
    assert loaded.model.config.patch_size_px == 28
    assert loaded.model_id.startswith("lrs-world")
    size = sum(p.stat().st_size for p in weights_dir.glob("*.safetensors"))
    assert 0 < size <= MAX_WEIGHTS_BYTES


def test_a_folder_named_world_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "world").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("world") == Path("world")


def test_missing_weights_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "KNOWN_MODELS", {"world": tmp_path / "nothing"})
    with pytest.raises(WeightsError, match="lrs world train"):
        resolve_model_dir("world")
