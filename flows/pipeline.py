"""The training pipeline as a Prefect flow: one Prefect task per DVC stage, in DVC's order.

Run locally with ``python -m flows.pipeline`` (Prefect starts a temporary local server; nothing to
set up; ``--help`` says what it does). Point ``PREFECT_API_URL`` at a Prefect server to see the
runs in its UI.

DVC stays the single cache: every task runs ``dvc repro --single-item <stage>``, so a stage whose
inputs did not change is skipped by DVC here exactly as under ``dvc repro``, and each task says
truthfully whether its stage ran, was up to date or was restored from DVC's run cache. Prefect adds
retries with exponential backoff for transient failures (a stage exiting with EX_TEMPFAIL = 75, or
DVC's repository lock being held) and observability; deployments and schedules are a later
addition. A stage's output is streamed to the task's log as it comes (progress bars thinned out to
one update every few seconds). A failed stage ends the flow in a Failed state without a traceback:
its own ``error: ...`` line is in the log once, and ``main()`` exits with the stage's exit code.
This module knows nothing of tensors; it only reads the DAG and runs stages.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import networkx as nx
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State
from prefect.tasks import exponential_backoff

from flows.stages import (
    DvcOutput,
    ProgressThrottle,
    StageFailure,
    dvc_command,
    failure_from_output,
    is_dvc_advice,
    is_dvc_failure_line,
    python_command,
    stage_outcome,
    stream,
)

USAGE = """\
usage: python -m flows.pipeline [-h]

Run sixfold's training pipeline as a Prefect flow: check params.yaml (python -m tasks.core.config),
refresh the data source's fingerprint (python -m tasks.source), then one Prefect task per DVC
stage in the order of dvc.yaml's graph, each running `dvc repro --single-item <stage>` in the
repository of the working directory. Reads params.yaml, dvc.yaml and the data source; writes what
the stages write (data/, models/, reports/, dvc.lock), exactly as `dvc repro` would.

Each stage's output is streamed as it runs. The last line says, for each stage, "ran",
"skipped (up to date)" or "restored from cache". A stage that exits 75 (a transient error) or
finds DVC's lock held is retried twice with exponential backoff.

exit codes: 0 every stage succeeded; otherwise the failing step's code: 1 a mistake in the data
or files, 2 a mistake in params.yaml, 75 a transient error that the retries did not fix.

options:
  -h, --help       show this message and exit (nothing is run)

environment:
  PREFECT_API_URL  a Prefect server to record the runs in (its UI shows them); without it Prefect
                   starts a temporary local server for the run
  PREFECT_LOGGING_LEVEL  Prefect's log level (INFO by default)
"""

PROGRESS_INTERVAL = 5.0  # seconds between two progress updates of a stage in the log


class StageFailed(RuntimeError):
    """A step failed; raised by :func:`run_pipeline` for Python callers (not by the flow)."""

    def __init__(self, failure: StageFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


class _NoEmptyTraceback(logging.Filter):
    """Prefect logs "Retries are exhausted" with ``exc_info=True`` also when a task returned a
    Failed state (no exception): the record would end in a stray ``NoneType: None`` line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None and record.exc_info[0] is None:
            record.exc_info = None
        return True


def _drop_empty_tracebacks() -> None:
    """Install :class:`_NoEmptyTraceback` on Prefect's task-run logger (once)."""
    task_runs = logging.getLogger("prefect.task_runs")
    if not any(isinstance(existing, _NoEmptyTraceback) for existing in task_runs.filters):
        task_runs.addFilter(_NoEmptyTraceback())


def stage_order(repo_root: str | Path = ".") -> list[str]:
    """Names of the stages in dvc.yaml, dependencies first (read from DVC's own graph)."""
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = list(reversed(list(nx.lexicographical_topological_sort(graph, key=str))))
        return [stage.name for stage in order if getattr(stage, "name", None)]


def _is_transient(task: Any, task_run: Any, state: Any) -> bool:
    failure = state.result(raise_on_failure=False)
    return isinstance(failure, StageFailure) and failure.transient


RETRIES = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=5),
    "retry_condition_fn": _is_transient,
}


def _run_step(
    name: str, command: list[str], repo_root: str, label: str | None = None
) -> tuple[list[str], State | None]:
    """Run `command`, its lines to the run's log as they come (DVC's advice and its repeat of
    a stage's error left out, progress thinned out). Returns DVC's own lines and, when the command
    failed, the Failed state to return (no exception, so no traceback)."""
    logger = get_run_logger()
    throttle = ProgressThrottle(PROGRESS_INTERVAL, time.monotonic)
    dvc_output = DvcOutput()  # for the outcome and the exit code

    def forward(text: str, is_progress: bool) -> None:
        if not is_progress:
            dvc_output.record(text)
        if is_dvc_advice(text) or is_dvc_failure_line(text) or not throttle.keep(text, is_progress):
            return
        level = logging.ERROR if text.lower().startswith("error") else logging.INFO
        logger.log(level, "%s", text.rstrip())

    exit_code = stream(command, repo_root, forward)
    if exit_code == 0:
        return dvc_output.lines, None
    failure = failure_from_output(name, exit_code, dvc_output.lines, label)
    return dvc_output.lines, Failed(message=failure.describe(), data=failure)


@task(cache_policy=NO_CACHE, **RETRIES)
def check_params(repo_root: str) -> str | State:
    """Check params.yaml before any work (a mistake there exits 2 with one line)."""
    command = python_command("-m", "tasks.core.config")
    _, failed = _run_step("config", command, repo_root, "the params.yaml check")
    return failed or "ok"


@task(cache_policy=NO_CACHE, **RETRIES)
def refresh_source(repo_root: str) -> str | State:
    """Re-fingerprint data.source so DVC sees files added to a folder or bucket outside the repo."""
    command = python_command("-m", "tasks.source")
    _, failed = _run_step("source", command, repo_root, "the source fingerprint (tasks.source)")
    return failed or "ok"


@task(cache_policy=NO_CACHE, **RETRIES)
def run_stage(stage: str, repo_root: str) -> str | State:
    """Run one DVC stage; returns 'ran', 'skipped (up to date)' or 'restored from cache'."""
    lines, failed = _run_step(stage, dvc_command("repro", "--single-item", stage), repo_root)
    if failed is not None:
        return failed
    outcome = stage_outcome(stage, lines)
    get_run_logger().info("%s: %s", stage, outcome)
    return outcome


def _failed(state: State) -> State:
    failure = state.result(raise_on_failure=False)
    if not isinstance(failure, StageFailure):  # a bug in the task itself: keep its traceback
        return state
    print(f"training-pipeline: {failure.describe()}; its error is above")
    return Failed(message=failure.describe(), data=failure)


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(repo_root: str = ".") -> dict[str, str] | State:
    """Run every DVC stage in order, one Prefect task each; returns {stage: outcome}, or a Failed
    state (its data the :class:`StageFailure`) at the first step that fails."""
    root = str(Path(repo_root).resolve())
    _drop_empty_tracebacks()
    for prepare in (check_params, refresh_source):
        state = prepare(root, return_state=True)
        if state.is_failed():  # a params.yaml or source error stops the flow before stage work
            return _failed(state)
    outcome: dict[str, str] = {}
    for stage in stage_order(root):
        state = run_stage.with_options(name=f"dvc:{stage}")(stage, root, return_state=True)
        if state.is_failed():
            return _failed(state)
        outcome[stage] = state.result()
    summary = ", ".join(f"{stage} {state}" for stage, state in outcome.items())
    print(f"training-pipeline: {summary}")
    return outcome


def run_pipeline(repo_root: str | Path = ".") -> dict[str, str]:
    """The flow for Python callers: {stage: outcome}; raises :class:`StageFailed` on a failure."""
    state = training_pipeline(str(repo_root), return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, StageFailure):
        raise StageFailed(result)
    return state.result()


def main(arguments: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if arguments is None else arguments
    if arguments and arguments[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    if arguments:
        print(
            f"error: unknown argument {arguments[0]!r}; see python -m flows.pipeline --help",
            file=sys.stderr,
        )
        raise SystemExit(2)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        outcome = run_pipeline(".")
    except StageFailed as error:
        raise SystemExit(error.failure.exit_code) from None
    if all(state == "skipped (up to date)" for state in outcome.values()):
        print("training-pipeline: every stage up to date")


if __name__ == "__main__":
    main()
