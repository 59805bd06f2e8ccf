"""The Prefect flow as a user meets it (a real Prefect server started by the tests, real DVC): one
line per mistake and the stage's exit code, progress while a stage runs, a truthful outcome per
stage (in the server too: up-to-date stages end as "Skipped"), retries of transient failures only,
parameter overrides checked before any stage, one run per workspace, the run's markdown artifact.

A run holds the workspace (flows/workspace.py): a second training run, or continual learning or
the drift monitor meanwhile, fails at once with one line naming the holder.

Most tests here replace the repo copy's dvc.yaml with a few small stages, so the flow's own
behaviour is tested in seconds; tests/system/test_pipeline.py runs it on the real pipeline.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT, VENV_BIN, run, write_params
from tests.images import noise, png_bytes, write

# The stages' script: `first` prints a progress bar, says it waits, waits for the file `go`
# (created by the test once it has seen that line), then writes its output; `second` copies it;
# `flaky` always fails as a network error does; `once` fails so the first time only; `lr` writes
# the train.lr it finds in params.yaml.
STAGE_SCRIPT = """\
import pathlib, sys, time
name = sys.argv[1]
if name == "once":
    marker = pathlib.Path("once.tried")
    if not marker.exists():
        marker.touch()
        print("error (transient, a retry may succeed): connection reset", file=sys.stderr)
        sys.exit(75)
    pathlib.Path("once.out").write_text("once")
    sys.exit(0)
if name == "lr":
    import yaml
    lr = yaml.safe_load(pathlib.Path("params.yaml").read_text())["train"]["lr"]
    pathlib.Path("lr.out").write_text(str(lr))
    sys.exit(0)
if name == "first":
    for i in range(1, 101):
        sys.stderr.write(f"\\rfirst: {i}/100"); sys.stderr.flush(); time.sleep(0.01)
    sys.stderr.write("\\n")
    print("first: waiting for go")
    deadline = time.monotonic() + 120
    while not pathlib.Path("go").exists():
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.05)
    pathlib.Path("first.out").write_text("first")
elif name == "second":
    pathlib.Path("second.out").write_text(pathlib.Path("first.out").read_text() + " second")
else:
    print("error (transient, a retry may succeed): refused", file=sys.stderr)
    sys.exit(75)
"""


def _small_pipeline(repo: Path, with_flaky: bool = False, extra: str | None = None) -> None:
    (repo / "stage_script.py").write_text(STAGE_SCRIPT)
    stages = {
        "first": {
            "cmd": "python stage_script.py first",
            "deps": ["stage_script.py"],
            "outs": ["first.out"],
        },
        "second": {
            "cmd": "python stage_script.py second",
            "deps": ["first.out"],
            "outs": ["second.out"],
        },
    }
    if with_flaky:
        stages["flaky"] = {
            "cmd": "python stage_script.py flaky",
            "deps": ["second.out"],
            "outs": ["flaky.out"],
        }
    if extra == "once":
        stages["once"] = {
            "cmd": "python stage_script.py once",
            "deps": ["second.out"],
            "outs": ["once.out"],
        }
    if extra == "lr":
        stages = {
            "lr": {
                "cmd": "python stage_script.py lr",
                "deps": ["stage_script.py"],
                "params": ["train.lr"],
                "outs": ["lr.out"],
            }
        }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))


@pytest.fixture
def server_env(prefect_server: str) -> dict[str, str]:
    """The environment of a flow run recorded in the tests' Prefect server."""
    return {"PREFECT_API_URL": prefect_server}


def _flow(repo: Path, env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return run(["python", "-m", "flows.pipeline", *arguments], repo, check=False, env=env)


def _start_flow(repo: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    environment = {**os.environ, **env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline"],
        cwd=repo,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(flow: subprocess.Popen[str], text: str, lines: list[str]) -> None:
    """Read the flow's output into `lines` until a line holds `text` (the flow still running)."""
    assert flow.stdout is not None
    deadline = time.monotonic() + 180
    for line in flow.stdout:
        lines.append(line)
        if text in line:
            return
        assert time.monotonic() < deadline, "".join(lines)
    raise AssertionError(f"the flow ended without saying {text!r}:\n{''.join(lines)}")


def _last_run_tasks(api_url: str) -> tuple[Any, dict[str, Any]]:
    """The newest flow run on the server and its task runs by name (`dvc:first-...` -> run)."""
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        flow_run = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        task_filter = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run.id]))
        tasks = client.read_task_runs(task_run_filter=task_filter)
        artifacts = [a for a in client.read_artifacts() if a.flow_run_id == flow_run.id]
    named = {task_run.name.rsplit("-", 1)[0]: task_run for task_run in tasks}
    return flow_run, {"tasks": named, "artifacts": artifacts}


def _stage_errors(log: str) -> list[str]:
    """The lines that carry a stage's own `error: ...` message."""
    return [
        line for line in log.splitlines() if re.search(r"(^|\s)error( \(transient[^)]*\))?: ", line)
    ]


@pytest.mark.slow
def test_flow_streams_progress_and_says_ran_skipped_or_restored(
    repo: Path, server_env: dict[str, str], prefect_server: str
) -> None:
    _small_pipeline(repo)
    flow = _start_flow(repo, server_env)
    assert flow.stdout is not None
    lines: list[str] = []
    _read_until(flow, "first: waiting for go", lines)  # the stage's line comes while it runs
    assert flow.poll() is None
    (repo / "go").touch()
    lines += flow.stdout.readlines()
    assert flow.wait(timeout=120) == 0, "".join(lines)
    log = "".join(lines)
    assert "training-pipeline: first ran, second ran" in log
    progress = [line for line in lines if re.search(r"first: \d+/100", line)]
    assert 1 <= len(progress) <= 3  # 100 redraws thinned out, the finished bar kept
    assert any("first: 100/100" in line for line in progress)
    assert "git add" not in log and "dvc push" not in log and "auto staging" not in log

    second = _flow(repo, server_env)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "training-pipeline: first skipped (up to date), second skipped (up to date)" in log
    assert "every stage up to date" in log
    # the server shows them as skipped, not as runs; the run's artifact says what happened
    flow_run, recorded = _last_run_tasks(prefect_server)
    assert flow_run.state_name == "Completed"
    states = {name: run.state_name for name, run in recorded["tasks"].items()}
    assert states["dvc:first"] == "Skipped" and states["dvc:second"] == "Skipped", states
    assert states["check_params"] == "Completed"
    (artifact,) = recorded["artifacts"]
    assert artifact.key == "training-pipeline" and artifact.type == "markdown"
    assert "| first | skipped (up to date) |" in artifact.data

    # `make clean` for this pipeline: the outputs go, DVC's cache keeps them
    (repo / "first.out").unlink()
    (repo / "second.out").unlink()
    third = _flow(repo, server_env)
    log = third.stdout + third.stderr
    assert third.returncode == 0, log[-3000:]
    assert "training-pipeline: first restored from cache, second restored from cache" in log
    assert (repo / "second.out").read_text() == "first second"


@pytest.mark.slow
def test_a_params_mistake_is_one_line_and_exit_2(repo: Path, server_env: dict[str, str]) -> None:
    text = (repo / "params.yaml").read_text().replace("\n  lr:", "\n  learning_rate:", 1)
    (repo / "params.yaml").write_text(text)
    result = _flow(repo, server_env)
    log = result.stdout + result.stderr
    assert result.returncode == 2, log[-3000:]
    errors = _stage_errors(log)
    assert len(errors) == 1 and "train.learning_rate" in errors[0], log[-3000:]
    assert "Traceback" not in log
    assert "the params.yaml check failed with exit 2 (a mistake in params.yaml)" in log
    assert not (repo / "dvc.lock").exists()


@pytest.mark.slow
def test_a_data_mistake_in_a_stage_is_one_line_and_exit_1(
    repo: Path, tmp_path: Path, server_env: dict[str, str]
) -> None:
    """A class with two images: the split stage cannot give it a place in every split. Not a
    transient error: it is not retried."""
    source = tmp_path / "images"
    for number, (label, count) in enumerate((("cat", 20), ("dog", 20), ("fox", 2))):
        for index in range(count):
            write(source / label / f"{index}.png", png_bytes(noise(number * 1000 + index)))
    write_params(repo, {"data": {"source": str(source), "image_size": 16}})
    result = _flow(repo, server_env)
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    errors = _stage_errors(log)
    assert len(errors) == 1 and "fox" in errors[0], log[-3000:]
    assert "Retry" not in log
    assert "Traceback" not in log
    assert "stage 'split' failed with exit 1 (a mistake in the data or files)" in log
    assert "ingest ran" not in log  # no success summary for a failed flow
    assert len(log.splitlines()) < 50, log


@pytest.mark.slow
def test_a_transient_failure_is_retried_then_exits_75(
    repo: Path, server_env: dict[str, str]
) -> None:
    _small_pipeline(repo, with_flaky=True)
    (repo / "go").touch()
    result = _flow(repo, server_env)
    log = result.stdout + result.stderr
    assert result.returncode == 75, log[-3000:]
    assert "Retry 1/2 will start" in log and "Retry 2/2 will start" in log
    assert "Retries are exhausted" in log
    assert len(_stage_errors(log)) == 3  # one line per attempt, no more
    assert "Traceback" not in log and "NoneType: None" not in log
    assert "stage 'flaky' failed with exit 75" in log


@pytest.mark.slow
def test_a_stage_that_fails_once_succeeds_on_retry(repo: Path, server_env: dict[str, str]) -> None:
    _small_pipeline(repo, extra="once")
    (repo / "go").touch()
    result = _flow(repo, server_env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "Retry 1/2 will start" in log and "Retry 2/2" not in log
    assert (repo / "once.out").read_text() == "once"
    assert "training-pipeline: first ran, second ran, once ran" in log


@pytest.mark.slow
def test_an_override_reaches_the_stage_and_a_bad_one_stops_the_flow(
    repo: Path, server_env: dict[str, str]
) -> None:
    _small_pipeline(repo, extra="lr")
    shutil.copyfile(REPO_ROOT / "params.yaml", repo / "params.yaml")  # with its comments
    result = _flow(repo, server_env, "--set", "train.lr=0.002")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert (repo / "lr.out").read_text() == "0.002"
    assert "params.yaml: train.lr: 0.003 -> 0.002" in log
    params_text = (repo / "params.yaml").read_text()
    assert "lr: 0.002                  # peak learning rate (AdamW)" in params_text  # comment kept
    assert "training-pipeline: lr ran" in log

    before = params_text
    for bad, key in (("train.lr=-1", "train.lr"), ("train.learning_rate=0.1", "learning_rate")):
        result = _flow(repo, server_env, "--set", bad)
        log = result.stdout + result.stderr
        assert result.returncode == 2, log[-3000:]
        errors = _stage_errors(log)
        assert len(errors) == 1 and key in errors[0], log[-3000:]
        assert "Traceback" not in log and "Retry" not in log
        assert "the params.yaml overrides failed with exit 2" in log
        assert "Running stage" not in log  # stopped before any stage
        assert (repo / "params.yaml").read_text() == before  # nothing written
    assert (repo / "lr.out").read_text() == "0.002"


@pytest.mark.slow
def test_a_second_run_in_the_same_workspace_fails_at_once(
    repo: Path, server_env: dict[str, str]
) -> None:
    _small_pipeline(repo)
    first = _start_flow(repo, server_env)
    lines: list[str] = []
    try:
        _read_until(first, "first: waiting for go", lines)  # the first run holds the workspace
        second = _flow(repo, server_env)
        log = second.stdout + second.stderr
        assert second.returncode == 75, log[-3000:]
        errors = [line for line in log.splitlines() if "error: the workspace" in line]
        assert len(errors) == 1, log[-3000:]  # one line, naming the run that holds it
        assert re.search(
            rf"error: the workspace {re.escape(str(repo))} is held by training-pipeline "
            r"\(flow run '[\w-]+' [0-9a-f-]{36}, pid \d+ on .+, since .+ UTC\); this "
            r"training-pipeline run did nothing: try again when that run has finished",
            errors[0],
        ), errors[0]
        assert "Running stage" not in log and "Traceback" not in log
    finally:
        (repo / "go").touch()
    assert first.stdout is not None
    lines += first.stdout.readlines()
    assert first.wait(timeout=120) == 0, "".join(lines)
    assert (repo / "second.out").read_text() == "first second"
    third = _flow(repo, server_env)  # the slot was given back
    assert third.returncode == 0, (third.stdout + third.stderr)[-3000:]


@pytest.mark.slow
def test_continual_learning_and_the_monitor_fail_at_once_while_the_workspace_is_held(
    repo: Path, tmp_path: Path, server_env: dict[str, str]
) -> None:
    """The same rule for the other two flows that write the workspace: held here through the
    flows' own lock, as a training run holds it."""
    from flows.workspace import WorkspaceLock

    holder = "training-pipeline (flow run 'held-by-the-test')"
    commands = {
        "continual-learning": ["python", "-m", "flows.continual", "--batch", str(tmp_path)],
        "drift-monitor": ["python", "-m", "flows.monitor"],
    }
    with WorkspaceLock.acquire(repo, holder):
        for flow, command in commands.items():
            result = run(command, repo, check=False, env=server_env)
            log = result.stdout + result.stderr
            assert result.returncode == 75, log[-3000:]
            errors = [line for line in log.splitlines() if "error:" in line]
            assert len(errors) == 1, log[-3000:]
            assert errors[0].endswith(
                f"error: the workspace {repo} is held by {holder}; this {flow} run did nothing: "
                "try again when that run has finished"
            ), errors[0]
            assert "Traceback" not in log
    assert not (repo / "reports" / "monitor").exists()  # nothing touched
    assert not list((repo / "data" / "batches").glob("*.dvc"))  # no data version made
    with WorkspaceLock.acquire(repo, "test"):  # the refused runs left it free
        pass
