"""Model names to model directories: the one place ``--model`` is turned into a folder.

Every command and library entry point that loads a model passes what the user gave through
:func:`resolve_model_dir`: a model directory (any layout :func:`lrs_core.batch.ask.load_engine`
reads), or the name of a model shipped inside the package (:data:`KNOWN_MODELS`): ``world``, the
model trained on the miniature world (``lrs_core/world/weights/``, see ``docs/world.md``).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from types import MappingProxyType
from typing import Final

from lrs_core.errors import WeightsError
from lrs_core.models.loading.files import PROJECT_CONFIG_FILE

#: Folder of the ``lrs_core`` package (the shipped models live inside it).
_PACKAGE_DIR: Final[Path] = Path(str(importlib.resources.files("lrs_core")))
#: Model name -> its directory inside the installed package.
KNOWN_MODELS: Final[MappingProxyType[str, Path]] = MappingProxyType(
    {"world": _PACKAGE_DIR / "world" / "weights"}
)


def _looks_like_path(text: str) -> bool:
    """True when ``text`` reads as a filesystem path rather than a bare model name."""
    return os.sep in text or "/" in text or text.startswith(".") or text.startswith("~")


def resolve_model_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """Return the model directory a ``--model`` value stands for.

    Args:
        name_or_path: a model directory (absolute or relative), or the name of a known model
            (:data:`KNOWN_MODELS`).

    Returns:
        The directory. A path is returned as given (user ``~`` expanded) even when it does not
        exist, so that the loader reports what is missing in it.

    Raises:
        WeightsError: a bare name that is neither a known model nor an existing folder.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists() or _looks_like_path(text):
        return path
    if text in KNOWN_MODELS:
        shipped = KNOWN_MODELS[text]
        if not (shipped / PROJECT_CONFIG_FILE).is_file():
            raise WeightsError(
                f"{shipped}: the shipped model {text!r} is missing from this installation; "
                "reinstall lrs, or train one with 'lrs world train --out DIR' and pass "
                "'--model DIR/model'"
            )
        return shipped
    known = ", ".join(sorted(KNOWN_MODELS)) or "none yet"
    raise WeightsError(
        f"model {text!r} is neither a model directory nor a known model name (known names: "
        f"{known}); give the path of a model folder, e.g. one made by 'lrs model init-tiny'"
    )
