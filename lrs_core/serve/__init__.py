"""``lrs serve``: a map of the ingested scenes and the answers, over HTTP (FastAPI).

Modules: :mod:`~lrs_core.serve.catalog` (which scenes and answer folders are served),
:mod:`~lrs_core.serve.tiles` (Web-Mercator tiles through rio-tiler's ``XarrayReader`` over the
store's xarray tree), :mod:`~lrs_core.serve.answers` (GeoJSON and monitoring figures of the answer
folders) and :mod:`~lrs_core.serve.app` (the FastAPI application and the page in ``static/``).
See ``docs/serve.md``.
"""

from lrs_core.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
