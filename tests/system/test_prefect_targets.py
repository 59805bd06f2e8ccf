"""`make prefect-server` and `make deploy`'s worker as a user meets them, for real: the UI of a
server started on another port calls that port; the worker stops within 30 s of SIGTERM with a
run in progress, the run then Crashed (not Running) and none of its processes left; a run
cancelled in Prefect leaves no process behind and the workspace free.

The run in progress is the training pipeline of a repository copy whose dvc.yaml is one stage
that waits: a run that lasts, without any training.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from tests.conftest import REPO_ROOT, VENV_BIN, free_port
from tests.system.test_deployments import pause_schedules

pytestmark = pytest.mark.slow

STOP_LIMIT_S = 30  # what make deploy promises for SIGTERM
WAIT_STAGE = """\
import pathlib, time
print("wait: started", flush=True)
time.sleep(600)
pathlib.Path("wait.out").write_text("waited")
"""


def _environment(extra: dict[str, str]) -> dict[str, str]:
    path = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def _wait_for_line(log: Path, text: str, process: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in (written := log.read_text()):
        assert process.poll() is None, f"exited {process.returncode}:\n{written[-4000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{written[-4000:]}"
        time.sleep(0.5)


def _ui_settings(port: int, server: subprocess.Popen[Any], timeout: float = 180) -> Any:
    """What the UI of the server on `port` reads at start: /ui-settings, once it answers."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, f"make prefect-server exited {server.returncode}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()
        except httpx.HTTPError:
            assert time.monotonic() < deadline, f"no answer on port {port} in {timeout} s"
            time.sleep(0.5)


def test_make_prefect_server_on_another_port_gives_its_ui_that_port(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    # a PREFECT_API_URL of another server in the environment is what misled the UI before
    environment = _environment({"PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    home = f"PREFECT_HOME={tmp_path / 'home'}"
    with log.open("w") as output:
        server = subprocess.Popen(
            ["make", "-s", "-o", "setup", "prefect-server", f"PREFECT_PORT={port}", home],
            cwd=REPO_ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make and the server it execs: one group, stopped whole
        )
        try:
            settings = _ui_settings(port, server)
            assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
    assert (tmp_path / "home" / "prefect.db").exists()  # its database in the home it was given
    assert f"Prefect home {tmp_path / 'home'}" in log.read_text()


@pytest.fixture
def waiting_repo(repo: Path) -> Path:
    """The repository copy with one stage, `wait`, that says so and waits ten minutes."""
    (repo / "wait_stage.py").write_text(WAIT_STAGE)
    stage = {"cmd": "python wait_stage.py", "deps": ["wait_stage.py"], "outs": ["wait.out"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"wait": stage}}))
    return repo


@pytest.fixture
def deploy_process(waiting_repo: Path, prefect_server: str) -> Iterator[subprocess.Popen[Any]]:
    """`python -m flows.deploy` (what make deploy runs) with its worker running; killed at the
    end if a test left it running."""
    log = waiting_repo.parent / "deploy.log"
    with log.open("w") as output:
        deploy = subprocess.Popen(
            [sys.executable, "-m", "flows.deploy"],
            cwd=waiting_repo,
            env=_environment({"PREFECT_API_URL": prefect_server}),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_line(log, "Worker 'ProcessWorker", deploy, timeout=300)
            pause_schedules(prefect_server)
            yield deploy
        finally:
            if deploy.poll() is None:  # the test left it running: stopped the way it documents
                started: list[psutil.Process] = []
                with contextlib.suppress(psutil.NoSuchProcess):
                    started = psutil.Process(deploy.pid).children(recursive=True)
                deploy.terminate()
                try:
                    deploy.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    deploy.kill()
                    deploy.wait(timeout=30)
                for survivor in started:  # the worker runs in a session of its own
                    with contextlib.suppress(psutil.NoSuchProcess):
                        survivor.kill()


def _run_processes(run_id: str) -> list[psutil.Process]:
    """Every process on the machine that executes the flow run `run_id`."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("PREFECT__FLOW_RUN_ID") == run_id:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_sigterm_stops_the_worker_and_its_run_within_30_s(
    waiting_repo: Path, prefect_server: str, deploy_process: subprocess.Popen[Any]
) -> None:
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    log = waiting_repo.parent / "deploy.log"
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        flow_run = run_deployment("training-pipeline/training-pipeline", timeout=0)
        _wait_for_line(log, "wait: started", deploy_process, timeout=300)
        assert _run_processes(str(flow_run.id))  # the engine, dvc and the stage

        started = time.monotonic()
        deploy_process.send_signal(signal.SIGTERM)
        exit_code = deploy_process.wait(timeout=STOP_LIMIT_S)
        stopped_in = time.monotonic() - started
        print(f"make deploy's worker stopped {stopped_in:.1f} s after SIGTERM")

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run.id).state
    output = log.read_text()
    assert exit_code == 0, output[-4000:]
    assert state is not None and state.type in (StateType.CRASHED, StateType.CANCELLED), state
    assert not _run_processes(str(flow_run.id)), "a process of the run outlived the worker"
    assert not (waiting_repo / "wait.out").exists()
    assert f"flow runs in progress: '{flow_run.name}' {state.name}" in output, output[-4000:]


def test_a_run_cancelled_in_prefect_stops_its_stage_and_frees_the_workspace(
    waiting_repo: Path, prefect_server: str, deploy_process: subprocess.Popen[Any]
) -> None:
    """Cancel from the UI (or `prefect flow-run cancel`): the worker stops the run's process
    group (the engine, dvc and the stage), so nothing writes on after the workspace is given
    back, and the worker goes on."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    from flows.workspace import WorkspaceLock

    log = waiting_repo.parent / "deploy.log"
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        flow_run = run_deployment("training-pipeline/training-pipeline", timeout=0)
        _wait_for_line(log, "wait: started", deploy_process, timeout=300)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Cancelling())
            deadline = time.monotonic() + 120
            while not (state := client.read_flow_run(flow_run.id).state).is_final():
                assert time.monotonic() < deadline, f"still {state.name}:\n{log.read_text()}"
                time.sleep(1)
    assert state.is_cancelled(), state
    deadline = time.monotonic() + 30  # the stage's SIGTERM, then at most SIGKILL after 10 s
    while _run_processes(str(flow_run.id)):
        assert time.monotonic() < deadline, "a process of the cancelled run is still running"
        time.sleep(0.5)
    with WorkspaceLock.acquire(waiting_repo, "test"):
        pass
    assert not (waiting_repo / "wait.out").exists()
    assert deploy_process.poll() is None  # the worker goes on, for the next run
