"""lrs: question answering over huge remote-sensing scenes.

The library computes; it never imports Prefect (flows and tasks live in the top-level ``flows`` and
``tasks`` packages). See ``docs/architecture.md`` for the system and ``README.md`` to get started.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xarray as xr

__version__ = "0.1.0"


def open_datatree(store: str | os.PathLike[str]) -> xr.DataTree:
    """Open a scene store as an xarray multiscale tree (``raster.pyramid.open_datatree``).

    Imported lazily, so ``import lrs_core`` stays light.
    """
    from lrs_core.raster.pyramid import open_datatree as open_store_tree

    return open_store_tree(store)
