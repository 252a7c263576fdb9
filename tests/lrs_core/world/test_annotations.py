"""DOTA-format annotations: a hand-written file is read, and writing round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrs_core.errors import DatasetError
from lrs_core.world.annotations import DotaAnnotation, DotaObject, read_dota, write_dota

# A DOTA v1.0 label file as the DOTA toolkit writes it, plus our optional attributes on two lines.
HAND_WRITTEN = """imagesource:GoogleEarth
gsd:0.146343590398
landcover:urban
2753 2408 2861 2385 2888 2468 2805 2502 plane 0 color=white shape=cross background=urban-fabric
100.5 200 140.5 200 140.5 210 100.5 210 small-vehicle 1
10 10 30 10 30 18 10 18 small-vehicle 0 color=red status=moving
"""


def test_read_hand_written_file(tmp_path: Path) -> None:
    path = tmp_path / "P0001.txt"
    path.write_text(HAND_WRITTEN)
    annotation = read_dota(path)
    assert annotation.image_source == "GoogleEarth"
    assert annotation.gsd_m == pytest.approx(0.146343590398)
    assert annotation.headers == {"landcover": "urban"}
    plane, hidden, car = annotation.objects
    assert plane.category == "plane" and not plane.difficult
    assert plane.attributes["background"] == "urban fabric"
    assert plane.hbox == (2753, 2385, 2888, 2502)
    assert hidden.category == "small vehicle" and hidden.difficult and hidden.attributes == {}
    assert car.attributes == {"color": "red", "status": "moving"}
    assert car.area_px == pytest.approx(160.0)
    assert car.length_px == pytest.approx(20.0)


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    annotation = DotaAnnotation(
        objects=(
            DotaObject(
                rbox=(1.0, 2.0, 11.0, 2.0, 11.0, 6.0, 1.0, 6.0),
                category="storage tank",
                attributes={"color": "blue", "background": "urban fabric"},
            ),
        ),
        image_source="lrs-world",
        gsd_m=0.5,
        headers={"landcover": "rural"},
    )
    path = write_dota(annotation, tmp_path / "a.txt")
    text = path.read_text()
    assert "storage-tank 0 color=blue background=urban-fabric" in text
    assert read_dota(path) == annotation


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("1 2 3 4 5 6 7 8 plane", "expected"),
        ("1 2 3 4 5 6 7 x plane 0", "numbers"),
        ("1 2 3 4 5 6 7 8 plane 2", "difficult"),
        ("1 2 3 4 5 6 7 8 plane 0 red", "key=value"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("imagesource:x\ngsd:null\n" + line + "\n")
    with pytest.raises(DatasetError, match=rf"bad.txt:3: .*{problem}"):
        read_dota(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_dota(tmp_path / "none.txt")
