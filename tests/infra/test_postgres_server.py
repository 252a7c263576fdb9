"""A real Prefect server on a real PostgreSQL runs the ingest deployment of infra/prefect.yaml.

The test starts PostgreSQL (Debian's package: initdb + pg_ctl in a temporary folder, as the
``postgres`` user when run as root), then ``prefect server start`` on it, creates the ``lrs-cpu``
process work pool, deploys ``ingest-scenes`` with ``prefect deploy --prefect-file
infra/prefect.yaml``, triggers a run with ``prefect deployment run``, and lets a process worker
(``prefect worker start --run-once``) execute it. It then checks the run through the API and the
rows in PostgreSQL itself. Skipped only when no PostgreSQL server binaries are installed.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.scenes import make_rgb_pattern, write_geotiff

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_START_TIMEOUT_S = 240
WORKER_TIMEOUT_S = 300
CLI_TIMEOUT_S = 180
EVENTS_SETTLE_S = 60.0
SMALL_CONFIG = {"chunk_px": 64, "levels_per_pass": 2, "n_workers": 1, "min_long_side_px": 64}


def _pg_bin() -> Path | None:
    found = sorted(
        glob.glob(PG_BIN_GLOB),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for candidate in reversed(found):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Postgres:
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

    def sql(self, query: str) -> str:
        result = self.run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "prefect",
            "-At",
            "-c",
            query,
        )
        return result.stdout.strip()

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip(
            f"no PostgreSQL server binaries under {PG_BIN_GLOB} (apt-get install postgresql)"
        )
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="lrs-pg-"))
    if run_as:
        user = pwd.getpwnam(run_as)
        os.chown(root, user.pw_uid, user.pw_gid)
    pg = Postgres(bin_dir=bin_dir, root=root, port=_free_port(), run_as=run_as)
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
        pg.run("createdb", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "prefect")
        yield pg
    finally:
        pg.run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **extra)
    return env


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"prefect server exited with {process.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    pytest.fail(
        f"prefect server not healthy after {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}"
    )


@pytest.fixture(scope="module")
def prefect_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    log = home / "server.log"
    env = _clean_env(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=postgres.url,
        PREFECT_SERVER_UI_ENABLED="false",
    )
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
        _wait_healthy(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _prefect(args: list[str], env: dict[str, str], *, timeout: float = CLI_TIMEOUT_S) -> str:
    result = subprocess.run(
        [PREFECT, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def test_deployment_runs_against_postgres(
    postgres: Postgres, prefect_server: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    inbox = data_dir / "inbox"
    inbox.mkdir(parents=True)
    write_geotiff(inbox / "good.tif", make_rgb_pattern(120, 170))
    (inbox / "corrupt.tif").write_bytes(b"II*\x00" + b"\x00not a tiff" * 30)
    env = _clean_env(
        PREFECT_API_URL=prefect_server,
        PREFECT_HOME=str(tmp_path / "client-home"),
        LRS_REPO_DIR=str(REPO_ROOT),
        LRS_DATA_DIR=str(data_dir),
    )

    _prefect(["work-pool", "create", "lrs-cpu", "--type", "process"], env)
    _prefect(
        [
            "--no-prompt",
            "deploy",
            "--prefect-file",
            "infra/prefect.yaml",
            "--name",
            "ingest-scenes",
        ],
        env,
    )
    params = json.dumps({"config": SMALL_CONFIG})  # sources/store come from prefect.yaml
    out = _prefect(["deployment", "run", "ingest-scenes/ingest-scenes", "--params", params], env)
    assert "Created flow run" in out, out
    _prefect(["worker", "start", "--pool", "lrs-cpu", "--run-once"], env, timeout=WORKER_TIMEOUT_S)

    # the store was written by the flow run the worker started
    assert (data_dir / "stores" / "good.zarr").is_dir()
    assert not (data_dir / "stores" / "corrupt.zarr").exists()

    # ... and PostgreSQL holds the run, its two task runs (one failed) and its artifacts
    run_rows = postgres.sql(
        "select fr.id, fr.state_type from flow_run fr join deployment d on fr.deployment_id = d.id "
        "where d.name = 'ingest-scenes'"
    ).splitlines()
    assert len(run_rows) == 1, run_rows
    flow_run_id, flow_state = run_rows[0].split("|")
    assert flow_state == "COMPLETED"
    # task-run states arrive as events that the server writes asynchronously: poll for them
    deadline = time.monotonic() + EVENTS_SETTLE_S
    while True:
        task_states = postgres.sql(
            f"select state_type from task_run where flow_run_id = '{flow_run_id}' "
            "order by state_type"
        ).splitlines()
        if task_states == ["COMPLETED", "FAILED"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert task_states == ["COMPLETED", "FAILED"]
    artifact_keys = set(
        postgres.sql(
            f"select key from artifact where flow_run_id = '{flow_run_id}' and key is not null"
        ).splitlines()
    )
    assert {"ingest-scenes", "ingest-summary"} <= artifact_keys
    summary = postgres.sql(
        f"select data from artifact where flow_run_id = '{flow_run_id}' and key = 'ingest-summary'"
    )
    assert "corrupt.tif" in summary

    # the same run seen through the API client (in this process: no new interpreter to start)
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read_run() -> tuple[str, str]:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            assert run.state is not None
            return run.state.type.value, run.parameters["store"]

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        state_type, store = asyncio.run(read_run())
    assert (state_type, store) == ("COMPLETED", str(data_dir / "stores"))
