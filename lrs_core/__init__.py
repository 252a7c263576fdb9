"""lrs: question answering over huge remote-sensing scenes.

The library computes; it never imports Prefect (flows and tasks live in the top-level ``flows`` and
``tasks`` packages). See ``docs/architecture.md`` for the system and ``README.md`` to get started.
"""

__version__ = "0.1.0"
