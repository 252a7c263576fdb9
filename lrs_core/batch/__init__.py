"""Answering questions: one scene (``ask``) or many questions over many scenes (``run``).

Modules (import them directly; this package imports nothing):

* :mod:`~lrs_core.batch.ask` -- load an engine (:func:`load_engine`), answer questions about one
  store.
* :mod:`~lrs_core.batch.requests` -- the one reader of request and question files and lists.
* :mod:`~lrs_core.batch.scenes` -- a request's scene to its store; rasters ingested; data root.
* :mod:`~lrs_core.batch.engines` -- one loaded engine per process; the ``full`` baseline.
* :mod:`~lrs_core.batch.run` -- :func:`run_batch`: resumable batches into GeoParquet, GeoJSON and
  overlays (``lrs batch``, ``lrs demo`` and the answer flow all run it).
"""
