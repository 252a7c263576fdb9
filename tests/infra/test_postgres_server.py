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
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.scenes import make_rgb_pattern, write_geotiff
from tests.infra.servers import (
    WORKER_TIMEOUT_S,
    Postgres,
    deploy_ingest_scenes,
    prefect_server,
    run_prefect,
)

EVENTS_SETTLE_S = 60.0
SMALL_CONFIG = {"chunk_px": 64, "levels_per_pass": 2, "n_workers": 1, "min_long_side_px": 64}


@pytest.fixture(scope="module")
def postgres_prefect_server(
    postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with prefect_server(tmp_path_factory.mktemp("prefect-server-home"), postgres.url) as server:
        yield server.url


def test_deployment_runs_against_postgres(
    postgres: Postgres, postgres_prefect_server: str, tmp_path: Path
) -> None:
    server_url = postgres_prefect_server
    data_dir = tmp_path / "data"
    inbox = data_dir / "inbox"
    inbox.mkdir(parents=True)
    write_geotiff(inbox / "good.tif", make_rgb_pattern(120, 170))
    (inbox / "corrupt.tif").write_bytes(b"II*\x00" + b"\x00not a tiff" * 30)
    env = deploy_ingest_scenes(server_url, tmp_path / "client-home", data_dir)
    params = json.dumps({"config": SMALL_CONFIG})  # sources/store come from prefect.yaml
    out = run_prefect(["deployment", "run", "ingest-scenes/ingest-scenes", "--params", params], env)
    assert "Created flow run" in out, out
    run_prefect(
        ["worker", "start", "--pool", "lrs-cpu", "--run-once"], env, timeout=WORKER_TIMEOUT_S
    )

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

    with temporary_settings(updates={PREFECT_API_URL: server_url}):
        state_type, store = asyncio.run(read_run())
    assert (state_type, store) == ("COMPLETED", str(data_dir / "stores"))
