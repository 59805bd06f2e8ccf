"""The schedules fire: a real `prefect server start` whose scheduler service creates a run of a
deployment from prefect.yaml, and a real process worker that runs it to completion.

`test_deployments.py` checks that the schedules are on the server and starts runs itself; this
module checks the part only the server's scheduler does. The test adds a short interval schedule
to the drift monitor's deployment in its copy of prefect.yaml (the shipped schedules are hourly
and weekly), deploys it as `make deploy` does, and waits for a run that the scheduler created
(`auto_scheduled`), not one the test started. The server has its own home and log, and the log
must hold no traceback: a scheduler service failing every loop (prefect 3.8.8 with SQLAlchemy
2.1: "Can't evaluate bulk DML statement") still leaves the API up, so only its log shows it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import VENV_BIN, _wait_for_health, _wait_for_port, free_port, run

pytestmark = pytest.mark.slow

INTERVAL_S = 20  # the test's schedule: a run every 20 s
# The scheduler creates the runs within a loop or two of the deployment (loop_seconds below);
# the worker polls every few seconds; the drift monitor on a trained repository ends in seconds.
WAIT_S = 600.0
POLL_S = 2.0


@pytest.fixture(scope="module")
def scheduling_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A Prefect server of this module's own (its log holds only this test's traffic), its
    scheduler looping every 5 s instead of 60 s; yields its API URL and its log file."""
    home = tmp_path_factory.mktemp("prefect-scheduling")
    port = free_port()
    environment = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": "",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
    }
    log_path = home / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 (open for the server's whole life)
    process = subprocess.Popen(
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_for_port(port, process, timeout=180)
        _wait_for_health(url, process)
        yield url, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


def _with_interval_schedule(prefect_yaml: Path, deployment: str, seconds: int) -> None:
    """Add an interval schedule to one deployment of `prefect_yaml` (its own kept)."""
    config = yaml.safe_load(prefect_yaml.read_text())
    (entry,) = (d for d in config["deployments"] if d["name"] == deployment)
    entry["schedules"] = [*entry.get("schedules", []), {"interval": seconds}]
    prefect_yaml.write_text(yaml.safe_dump(config, sort_keys=False))


def _flow_runs(api_url: str, deployment: str) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return list(
            client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
            )
        )


def test_the_scheduler_creates_a_run_that_a_worker_completes(
    trained_repo: Path,
    scheduling_server: tuple[str, Path],
    tmp_path: Path,
) -> None:
    api_url, server_log = scheduling_server
    repo = tmp_path / "repo"
    shutil.copytree(trained_repo, repo, symlinks=True)
    _with_interval_schedule(repo / "prefect.yaml", "drift-monitor", INTERVAL_S)
    environment = {"PREFECT_API_URL": api_url}
    run(["python", "-m", "flows.deploy", "--no-worker"], repo, env=environment)
    worker_log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 (open for the worker's life)
    worker = subprocess.Popen(
        [str(VENV_BIN / "prefect"), "worker", "start", "--pool", "sixfold", "--type", "process"],
        cwd=repo,
        env={
            **os.environ,
            **environment,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
        },
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    completed: list[Any] = []
    runs: list[Any] = []
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not completed:
            runs = _flow_runs(api_url, "drift-monitor")
            completed = [r for r in runs if r.auto_scheduled and r.state and r.state.is_completed()]
            if not completed:
                time.sleep(POLL_S)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=30)
        worker_log.close()
    log_text = server_log.read_text(errors="replace")
    states = [(r.name, r.auto_scheduled, r.state_name) for r in runs]
    assert completed, (
        f"no scheduler-created run completed within {WAIT_S:g} s; runs: {states}\n"
        f"--- server log\n{log_text[-4000:]}\n"
        f"--- worker log\n{(tmp_path / 'worker.log').read_text()[-4000:]}"
    )
    assert all(r.auto_scheduled for r in runs), states  # the test started none of them
    assert "Traceback" not in log_text, log_text[-6000:]
    assert (repo / "reports" / "monitor").is_dir()  # the scheduled check ran in the repository
