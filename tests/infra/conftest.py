"""Fixtures of the infra tests: one PostgreSQL server for the session (see ``servers.py``)."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.net import free_port
from tests.infra.servers import PG_BIN_GLOB, Postgres, pg_bin


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server with an empty database ``prefect``; skip when none is installed."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip(
            f"no PostgreSQL server binaries under {PG_BIN_GLOB} (apt-get install postgresql)"
        )
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="lrs-pg-"))
    if run_as:
        user = pwd.getpwnam(run_as)
        os.chown(root, user.pw_uid, user.pw_gid)
    pg = Postgres(bin_dir=bin_dir, root=root, port=free_port(), run_as=run_as)
    data = root / "data"
    pg.run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
    pg.run(
        "pg_ctl",
        "-D",
        str(data),
        "-l",
        str(root / "postgres.log"),
        "-w",
        "-t",
        "120",
        "-o",
        f"-p {pg.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    )
    try:
        pg.create_database("prefect")
        yield pg
    finally:
        pg.run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
