"""Prefect deployments as `make deploy` makes them: a real `prefect server start` on 127.0.0.1,
`prefect deploy --all` from prefect.yaml and a process worker (flows/deploy.py, what the Makefile
runs), one deployment run of each flow that completes, the schedules on the server.

The flows run in a copy of the trained repository (a real `dvc repro` of the digits, with a
champion): the training pipeline finds every stage up to date, the drift monitor finds too few
served records for a verdict, continual learning learns from a small inverted batch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import VENV_BIN, run

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 900  # a deployment run must end within this (continual learning fine-tunes)
STOP_LIMIT_S = 30  # make deploy's worker stops within this of SIGTERM
PER_CLASS = 24  # inverted images per class in the continual batch: enough for a test part


@pytest.fixture(scope="module")
def deployed(
    trained_repo: Path, prefect_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """A copy of the trained repository deployed to the server and a worker running, both by
    `python -m flows.deploy` (what make deploy runs); SIGTERM stops it within 30 s."""
    repo = tmp_path_factory.mktemp("deployed") / "repo"
    shutil.copytree(trained_repo, repo, symlinks=True)
    log = open(repo.parent / "worker.log", "w")  # noqa: SIM115 (open for the worker's life)
    deploy = subprocess.Popen(
        [str(VENV_BIN / "python"), "-m", "flows.deploy"],
        cwd=repo,
        env={
            **os.environ,
            "PREFECT_API_URL": prefect_server,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while "Worker 'ProcessWorker" not in _worker_log(repo):
            assert deploy.poll() is None and time.monotonic() < deadline, _worker_log(repo)
            time.sleep(0.5)
        assert (
            "Deployment 'training-pipeline/training-pipeline' successfully created"
            in (repo.parent / "worker.log").read_text()
        )
        pause_schedules(prefect_server)
        yield repo, prefect_server
    finally:
        deploy.terminate()
        try:
            assert deploy.wait(timeout=STOP_LIMIT_S) == 0, _worker_log(repo)
        except subprocess.TimeoutExpired:
            deploy.kill()  # not left running after the session; the failure is reported
            raise
        finally:
            log.close()


def pause_schedules(api_url: str) -> None:
    """Turn the deployments' schedules off (they stay on the server, inactive): a scheduled
    run that starts while a test's run holds the workspace would make one of them fail."""
    with _api(api_url) as client:
        for deployment in client.read_deployments():
            for schedule in deployment.schedules:
                client.update_deployment_schedule(deployment.id, schedule.id, active=False)


@contextmanager
def _api(api_url: str) -> Iterator[Any]:
    """Prefect's sync client for the server at `api_url`, the setting in force meanwhile."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def _run(api_url: str, name: str, parameters: dict[str, Any] | None = None) -> Any:
    """Start a deployment run and wait until it ends; its final flow run."""
    from prefect.deployments import run_deployment

    with _api(api_url):
        return run_deployment(name=name, parameters=parameters or {}, timeout=RUN_TIMEOUT_S)


def _worker_log(repo: Path) -> str:
    return (repo.parent / "worker.log").read_text()[-6000:]


def test_the_schedules_are_on_the_server(deployed: tuple[Path, str]) -> None:
    repo, api_url = deployed
    with _api(api_url) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    assert {"training-pipeline", "drift-monitor", "continual-learning"} <= set(deployments)
    crons = {
        name: [schedule.schedule.cron for schedule in deployment.schedules]
        for name, deployment in deployments.items()
    }
    assert crons["training-pipeline"] == ["0 3 * * 1"]
    assert crons["drift-monitor"] == ["0 * * * *"]
    assert crons["continual-learning"] == []
    assert all(d.work_pool_name == "sixfold" for d in deployments.values())
    # one concurrency rule, the flows' workspace lock: no deployment limit queues a run
    assert all(d.concurrency_limit is None for d in deployments.values())
    assert all(d.global_concurrency_limit is None for d in deployments.values())
    step = deployments["training-pipeline"].pull_steps[0]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(repo)
    assert deployments["drift-monitor"].parameters == {
        "on_drift": "continual-learning/continual-learning"
    }


def test_a_training_pipeline_run_completes_and_skips_every_stage(
    deployed: tuple[Path, str],
) -> None:
    repo, api_url = deployed
    flow_run = _run(api_url, "training-pipeline/training-pipeline")
    assert flow_run.state.is_completed(), _worker_log(repo)
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    with _api(api_url) as client:
        task_filter = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run.id]))
        states = {
            t.name.rsplit("-", 1)[0]: t.state_name
            for t in client.read_task_runs(task_run_filter=task_filter)
        }
    stages = {name: state for name, state in states.items() if name.startswith("dvc:")}
    dvc_stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {f"dvc:{name}" for name in dvc_stages}, states
    assert set(stages.values()) == {"Skipped"}, states


def test_a_drift_monitor_run_completes(deployed: tuple[Path, str]) -> None:
    repo, api_url = deployed
    flow_run = _run(api_url, "drift-monitor/drift-monitor")
    assert flow_run.state.is_completed(), _worker_log(repo)
    reports = sorted((repo / "reports" / "monitor").glob("*.json"))
    assert any(path.name != "state.json" for path in reports)  # the check wrote its report


def test_a_continual_learning_run_completes(deployed: tuple[Path, str], tmp_path: Path) -> None:
    repo, api_url = deployed
    batch = tmp_path / "inverted"
    run(
        ["python", "-m", "tasks.monitoring.simulate", "--kind", "invert", "--out", str(batch)], repo
    )
    for class_folder in batch.iterdir():  # a small batch: the run is about the deployment
        for extra in sorted(class_folder.iterdir())[PER_CLASS:]:
            extra.unlink()
    flow_run = _run(api_url, "continual-learning/continual-learning", {"batch": str(batch)})
    assert flow_run.state.is_completed(), _worker_log(repo)
    reports = list((repo / "reports" / "continual").glob("*.json"))
    assert len(reports) == 1
    assert list((repo / "data" / "batches").glob("*.dvc"))  # a new DVC-versioned data version
