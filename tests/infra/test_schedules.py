"""Schedules fire: a real ``prefect server`` creates the runs of an interval schedule, on SQLite and
on PostgreSQL, and a worker runs one to completion.

``ingest-scenes`` of ``infra/prefect.yaml`` is deployed with an interval schedule
(``prefect deploy --interval``); the server's scheduler service (its loop shortened by
``PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS``) must create its scheduled runs, with nobody
calling ``prefect deployment run``, and a process worker (``--run-once --limit 1``) must run the
first one to ``COMPLETED``. This is the test that fails when the dependency set breaks the
scheduler: Prefect 3.8 under SQLAlchemy 2.1 logs ``InvalidRequestError: Can't evaluate bulk DML
statement`` every loop and never creates a run (see infra/README.md, "Pins").

Slow (two servers and two flow-run processes, ~1-2 min each on a quiet machine): run with
``pytest -m slow tests/infra/test_schedules.py``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.scenes import make_rgb_pattern, write_geotiff
from tests.infra.servers import (
    WORKER_TIMEOUT_S,
    PrefectServer,
    deploy_ingest_scenes,
    log_tail,
    prefect_server,
    run_prefect,
)

pytestmark = pytest.mark.slow

DEPLOYMENT = "ingest-scenes/ingest-scenes"
#: Seconds between the runs of the test schedule (a run is due within this of the deployment).
SCHEDULE_INTERVAL_S = 10
#: Server settings: the scheduler looks for work every 2 s (default 60 s) and keeps few runs ahead.
SCHEDULER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "3",
}
#: Scheduled runs the scheduler must have created before the worker starts.
MIN_SCHEDULED_RUNS = 2
#: Seconds the scheduler gets to create them (it loops every 2 s; generous for a loaded box).
SCHEDULED_RUNS_TIMEOUT_S = 90.0
#: Seconds to wait for the first run to be due (the worker only takes runs due within 10 s).
DUE_SLACK_S = 2.0
POLL_S = 1.0
HTTP_TIMEOUT_S = 30
SMALL_CONFIG = {"chunk_px": 64, "levels_per_pass": 2, "n_workers": 1, "min_long_side_px": 64}


@pytest.fixture(params=["sqlite", "postgres"])
def scheduling_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrefectServer]:
    """A ``prefect server start`` with a fast scheduler loop, on SQLite or on PostgreSQL."""
    database_url = None
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres").create_database("prefect_schedules")
    home = tmp_path / "server-home"
    home.mkdir()
    with prefect_server(home, database_url, SCHEDULER_SETTINGS) as server:
        yield server


def _api(server: PrefectServer, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.url}{path}",
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        return json.loads(response.read())


def _runs(server: PrefectServer, deployment_id: str) -> list[dict[str, Any]]:
    return list(
        _api(server, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}})
    )


def _start_time(run: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00"))


def test_interval_schedule_fires_and_a_worker_runs_it(
    scheduling_server: PrefectServer, tmp_path: Path
) -> None:
    server = scheduling_server
    data_dir = tmp_path / "data"
    (data_dir / "inbox").mkdir(parents=True)
    write_geotiff(data_dir / "inbox" / "scene.tif", make_rgb_pattern(120, 170))
    env = deploy_ingest_scenes(
        server.url,
        tmp_path / "client-home",
        data_dir,
        "--interval",
        str(SCHEDULE_INTERVAL_S),
        "--params",
        json.dumps({"config": SMALL_CONFIG}),
    )
    deployment = _api(server, f"/deployments/name/{DEPLOYMENT}")
    assert [s["schedule"].get("interval") for s in deployment["schedules"]] == [SCHEDULE_INTERVAL_S]

    # Nobody asks for a run: the server's scheduler service must create them.
    deadline = time.monotonic() + SCHEDULED_RUNS_TIMEOUT_S
    runs = _runs(server, deployment["id"])
    while len(runs) < MIN_SCHEDULED_RUNS and time.monotonic() < deadline:
        time.sleep(POLL_S)
        runs = _runs(server, deployment["id"])
    assert len(runs) >= MIN_SCHEDULED_RUNS, (
        f"the scheduler created {len(runs)} runs in {SCHEDULED_RUNS_TIMEOUT_S:.0f} s; "
        f"server log:\n{log_tail(server.log)}"
    )
    assert all(r["auto_scheduled"] and r["state_type"] == "SCHEDULED" for r in runs), runs
    assert all(str(r["idempotency_key"]).startswith("scheduled ") for r in runs), runs

    # The worker takes runs due within its prefetch window: wait for the first to be due.
    first = min(runs, key=_start_time)
    wait_s = (_start_time(first) - datetime.now(UTC)).total_seconds() - DUE_SLACK_S
    time.sleep(max(0.0, wait_s))
    run_prefect(
        ["worker", "start", "--pool", "lrs-cpu", "--run-once", "--limit", "1"],
        env,
        timeout=WORKER_TIMEOUT_S,
    )

    runs = _runs(server, deployment["id"])
    completed = [r for r in runs if r["state_type"] == "COMPLETED"]
    assert len(completed) == 1, [(r["name"], r["state_type"]) for r in runs]
    assert completed[0]["auto_scheduled"]
    assert (data_dir / "stores" / "scene.zarr").is_dir()
    assert "Can't evaluate bulk DML" not in server.log.read_text(errors="replace")
