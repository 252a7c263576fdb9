"""lrs: question answering over huge remote-sensing scenes.

The library computes; it never imports Prefect (flows and tasks live in the top-level ``flows`` and
``tasks`` packages). See ``docs/architecture.md`` for the system and ``README.md`` to get started.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """Lazy top-level API: ``lrs_core.open_datatree`` without importing zarr at package import."""
    if name == "open_datatree":
        from lrs_core.pyramid import open_datatree

        return open_datatree
    raise AttributeError(f"module 'lrs_core' has no attribute {name!r}")
