"""Shared pytest configuration.

Fixtures that several test areas use live in ``tests/fixtures/<area>.py`` and are loaded here as
plugins, so each area owns its own file.
"""

pytest_plugins = [
    "tests.fixtures.scenes",
    "tests.fixtures.models",
    "tests.fixtures.stores",
    "tests.fixtures.focus_scenes",
    "tests.fixtures.prefect",
    "tests.fixtures.serve",
]
