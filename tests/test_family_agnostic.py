"""No family branches outside ``lrs_core/models``: the engine, distillation, batch and CLI call the
model family interface (``loaded.family``, :class:`lrs_core.models.families.base.EngineFamily`).

Family-specific names (the Qwen-VL classes and detector, M-RoPE, the LLaVA classes) may appear only
in ``lrs_core/models/`` (the families themselves and the loading entry point's layout detection).
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lrs_core"
#: Names that mean code branches on (or reaches into) one family.
FAMILY_NAMES = re.compile(r"QwenVl|Llava|is_qwen_vl_dir|(?i:mrope)")
#: Where those names belong: the families and the loading entry point's detection.
ALLOWED = PACKAGE / "models"


def _hits(files: list[Path]) -> list[str]:
    hits = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if FAMILY_NAMES.search(line):
                hits.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    return hits


def test_no_family_names_outside_models() -> None:
    outside = [p for p in sorted(PACKAGE.rglob("*.py")) if ALLOWED not in p.parents]
    assert len(outside) > 50  # the scan sees the package
    hits = _hits(outside)
    assert not hits, "call loaded.family instead of branching on the family:\n" + "\n".join(hits)


def test_the_scan_finds_family_names_where_they_are() -> None:
    # the pattern matches the names as the families spell them (so the test above can fail)
    families = sorted((ALLOWED / "families").glob("*.py"))
    text = "\n".join(_hits(families))
    for name in ("QwenVlEngineModel", "is_qwen_vl_dir", "LlavaFamily", "mrope"):
        assert name in text
