"""``lrs demo``'s terminal rendering of answers."""

from __future__ import annotations

from lrs_core.cli.demo import ANSWER_PREVIEW_CHARS, answer_preview


def test_answer_preview_escapes_and_truncates() -> None:
    garbage = "U" + "\ufffd" * 100 + "\x1b[2J"
    shown = answer_preview(garbage)
    assert shown.isascii() and shown.isprintable()
    assert shown.endswith("...")
    assert shown.count("\\ufffd") == ANSWER_PREVIEW_CHARS - 1
    assert answer_preview("yes") == "'yes'"
