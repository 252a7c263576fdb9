"""Real servers for the infra tests: PostgreSQL from Debian's packages and ``prefect server start``.

PostgreSQL runs from ``initdb`` + ``pg_ctl`` in a temporary folder (as the ``postgres`` user when
the tests run as root); each Prefect server gets its own database in it, or SQLite in its
``PREFECT_HOME``. The fixtures that use these helpers live in ``tests/infra/conftest.py``.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_START_TIMEOUT_S = 240
SERVER_STOP_TIMEOUT_S = 30
WORKER_TIMEOUT_S = 300
CLI_TIMEOUT_S = 180
#: Characters of the server log shown when a server test fails.
LOG_TAIL_CHARS = 4000


def pg_bin() -> Path | None:
    """Return the newest PostgreSQL server ``bin`` folder installed, or None."""
    found = sorted(
        glob.glob(PG_BIN_GLOB),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for candidate in reversed(found):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server started for the tests (trust authentication on 127.0.0.1)."""

    bin_dir: Path
    root: Path
    port: int
    run_as: str | None

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / tool), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(
            command, check=check, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
        )

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its SQLAlchemy URL for Prefect."""
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url_of(name)

    def sql(self, query: str, database: str = "prefect") -> str:
        result = self.run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-At",
            "-c",
            query,
        )
        return result.stdout.strip()

    def url_of(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_of("prefect")


def clean_env(**extra: str) -> dict[str, str]:
    """Return this process's environment without PREFECT_* settings, telemetry off, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **extra)
    return env


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else "(no log)"


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the server at ``url`` answers ``/health``; fail the test if it exits or hangs."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prefect server exited with {process.returncode}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    pytest.fail(f"prefect server not healthy after {SERVER_START_TIMEOUT_S} s:\n{log_tail(log)}")


@dataclass(frozen=True)
class PrefectServer:
    """A running ``prefect server start``: its API URL and its log file."""

    url: str
    log: Path


@contextmanager
def prefect_server(
    home: Path, database_url: str | None = None, settings: Mapping[str, str] | None = None
) -> Iterator[PrefectServer]:
    """Run ``prefect server start`` (no UI) until the block ends.

    Args:
        home: its ``PREFECT_HOME`` (the SQLite database lives there when no URL is given).
        database_url: ``PREFECT_API_DATABASE_CONNECTION_URL``; None: SQLite in ``home``.
        settings: further ``PREFECT_*`` variables of the server process.
    """
    port = free_port()
    log = home / "server.log"
    env = clean_env(PREFECT_HOME=str(home), PREFECT_SERVER_UI_ENABLED="false", **(settings or {}))
    if database_url is not None:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=home,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(url, process, log)
        yield PrefectServer(url=url, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_prefect(args: list[str], env: dict[str, str], *, timeout: float = CLI_TIMEOUT_S) -> str:
    """Run the ``prefect`` CLI from the repository root; fail the test on a non-zero exit."""
    result = subprocess.run(
        [PREFECT, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def deploy_ingest_scenes(
    server_url: str, client_home: Path, data_dir: Path, *deploy_options: str
) -> dict[str, str]:
    """Create the ``lrs-cpu`` process pool and deploy ``ingest-scenes`` of infra/prefect.yaml.

    Args:
        server_url: the Prefect API URL.
        client_home: the client's own ``PREFECT_HOME``.
        data_dir: ``LRS_DATA_DIR`` of the deployment (its ``inbox/`` and ``stores/``).
        deploy_options: further ``prefect deploy`` options (e.g. ``--interval``).

    Returns:
        The client environment for further ``prefect`` commands (:func:`run_prefect`).
    """
    env = clean_env(
        PREFECT_API_URL=server_url,
        PREFECT_HOME=str(client_home),
        LRS_REPO_DIR=str(REPO_ROOT),
        LRS_DATA_DIR=str(data_dir),
    )
    run_prefect(["work-pool", "create", "lrs-cpu", "--type", "process"], env)
    deploy = ["--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml"]
    run_prefect([*deploy, "--name", "ingest-scenes", *deploy_options], env)
    return env
