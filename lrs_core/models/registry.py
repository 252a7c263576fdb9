"""Model names to model directories: the one place ``--model`` is turned into a folder.

Every command and library entry point that loads a model passes what the user gave through
:func:`resolve_model_dir`. Today it knows no names yet: it accepts a model directory (any layout
:func:`lrs_core.batch.ask.load_engine` reads). A named model (the project's trained ``world``
model, say) is added here, in :data:`KNOWN_MODELS`, without touching any caller.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Final

from lrs_core.errors import WeightsError

#: Model name -> its directory. Empty until the project ships a named model.
KNOWN_MODELS: Final[MappingProxyType[str, Path]] = MappingProxyType({})


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
        return KNOWN_MODELS[text]
    known = ", ".join(sorted(KNOWN_MODELS)) or "none yet"
    raise WeightsError(
        f"model {text!r} is neither a model directory nor a known model name (known names: "
        f"{known}); give the path of a model folder, e.g. one made by 'lrs model init-tiny'"
    )
