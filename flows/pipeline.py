"""The training pipeline as a Prefect flow: one Prefect task per DVC stage, in DVC's order.

Run locally with ``python -m flows.pipeline`` (Prefect starts a temporary local server; nothing to
set up; ``--help`` says what it does). Point ``PREFECT_API_URL`` at a Prefect server to see the
runs in its UI.

DVC stays the single cache: every task runs ``dvc repro --single-item <stage>``, so a stage whose
inputs did not change is skipped by DVC here exactly as under ``dvc repro``, and each task says
truthfully whether its stage ran, was up to date or was restored from DVC's run cache. Prefect adds
retries with exponential backoff for transient failures (a stage exiting with EX_TEMPFAIL = 75, or
DVC's repository lock being held) and observability: a stage DVC found up to date ends in a
Completed state named "Skipped" (not a run), and a finished run leaves a markdown artifact
(`training-pipeline`) with the test metrics, the baseline and the gate's decision.

Flow parameters override params.yaml keys the way ``dvc exp run -S`` does (`overrides`, e.g.
``{"train.lr": 0.001}``): checked by the typed config before any stage runs, then written into
params.yaml (`tasks.core.overrides`). Two runs in one workspace would race on its files: the run
holds the workspace lock (`flows.workspace`, shared with continual learning and the drift
monitor), so a second run fails at once with one line naming the holder, before it touches
anything; DVC's own lock is the second guard. Deployments and schedules: prefect.yaml at the
repository root.

A stage's output is streamed to the task's log as it comes (progress bars thinned out to
one update every few seconds). A failed stage ends the flow in a Failed state without a traceback:
its own ``error: ...`` line is in the log once, and ``main()`` exits with the stage's exit code.
This module knows nothing of tensors; it only reads the DAG and runs stages.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import networkx as nx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from flows.stages import (
    TRANSIENT_RETRIES,
    DvcOutput,
    ProgressThrottle,
    StageFailure,
    dvc_command,
    failure_from_output,
    is_dvc_advice,
    is_dvc_failure_line,
    python_command,
    reported_failure,
    stage_outcome,
    stream,
)
from flows.workspace import holding_workspace
from tasks.core.errors import ConfigError
from tasks.core.overrides import parse_assignment

USAGE = """\
usage: python -m flows.pipeline [-h] [--set KEY=VALUE ...]

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

A run holds the workspace (.sixfold/workspace.lock): a second run, or a continual-learning or
drift-monitor run, started meanwhile (by hand or by a schedule) fails at once with one line
naming the holder and exit 75, touching nothing.

options:
  -h, --help       show this message and exit (nothing is run)
  --set KEY=VALUE  override a params.yaml key first, as `dvc exp run -S` does (repeatable): the
                   value is read as YAML, checked by the typed config before any stage runs, and
                   written into params.yaml (comments kept), so DVC reruns what reads it

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


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def set_overrides(repo_root: str, overrides: dict[str, Any]) -> str | State:
    """Check the flow's overrides with the typed config, then write them into params.yaml
    (``python -m tasks.core.overrides``; a bad one exits 2 with one line, nothing written)."""
    assignments = [f"--set={key}={json.dumps(value)}" for key, value in overrides.items()]
    command = python_command("-m", "tasks.core.overrides", *assignments)
    _, failed = _run_step("overrides", command, repo_root, "the params.yaml overrides")
    return failed or "ok"


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def check_params(repo_root: str) -> str | State:
    """Check params.yaml before any work (a mistake there exits 2 with one line)."""
    command = python_command("-m", "tasks.core.config")
    _, failed = _run_step("config", command, repo_root, "the params.yaml check")
    return failed or "ok"


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def refresh_source(repo_root: str) -> str | State:
    """Re-fingerprint data.source so DVC sees files added to a folder or bucket outside the repo."""
    command = python_command("-m", "tasks.source")
    _, failed = _run_step("source", command, repo_root, "the source fingerprint (tasks.source)")
    return failed or "ok"


SKIPPED = "skipped (up to date)"


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def run_stage(stage: str, repo_root: str) -> State:
    """Run one DVC stage. Its state: Completed named "Skipped" when DVC found it up to date (the
    UI shows it as skipped, not as a run), else Completed; the data is the outcome: 'ran',
    'skipped (up to date)' or 'restored from cache'."""
    lines, failed = _run_step(stage, dvc_command("repro", "--single-item", stage), repo_root)
    if failed is not None:
        return failed
    outcome = stage_outcome(stage, lines)
    get_run_logger().info("%s: %s", stage, outcome)
    if outcome == SKIPPED:
        return Completed(
            name="Skipped", message=f"{stage}: up to date, DVC ran nothing", data=outcome
        )
    return Completed(message=f"{stage}: {outcome}", data=outcome)


def _failed(state: State) -> State:
    return reported_failure(state, "training-pipeline")


def _read_report(path: Path) -> dict[str, Any]:
    """A report's JSON object; {} when it is missing, unreadable or not an object."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def _entry(report: dict[str, Any], key: str) -> dict[str, Any]:
    """`report[key]` when it is an object, else {} (gate.json's champion is null before the
    first promotion)."""
    value = report.get(key)
    return value if isinstance(value, dict) else {}


def run_summary(root: Path, outcome: dict[str, str], overrides: dict[str, Any]) -> str:
    """The run's markdown artifact: test metrics, the baseline, the gate's decision, the stages."""
    metrics = _read_report(root / "reports" / "metrics.json")
    gate = _read_report(root / "reports" / "gate.json")
    test, baseline = _entry(metrics, "test"), _entry(metrics, "baseline")
    lines = ["# training-pipeline", ""]
    if test:
        interval = test.get("accuracy_ci")
        low, high = interval if isinstance(interval, list) and len(interval) == 2 else ("?", "?")
        lines += [
            "| metric | value |",
            "|---|---|",
            f"| test accuracy | {test.get('accuracy')} (95% CI {low} to {high}) |",
            f"| macro-F1 | {test.get('macro_f1')} |",
            f"| expected calibration error | {test.get('ece')} |",
            f"| baseline ({baseline.get('name', '?')}) | {baseline.get('accuracy')} |",
            "",
        ]
    else:
        lines += ["No test metrics (reports/metrics.json is missing).", ""]
    if gate:
        candidate = _entry(gate, "candidate").get("id", "?")
        champion = _entry(gate, "champion").get("id", "none")
        decision = gate.get("decision", "?")
        lines += [f"**Gate**: {decision} (candidate {candidate}; champion now {champion})", ""]
        reasons = gate.get("reasons") if isinstance(gate.get("reasons"), list) else []
        lines += [f"- {reason}" for reason in reasons] + [""]
    if overrides:
        lines += ["**Overrides**: " + ", ".join(f"`{k}={v!r}`" for k, v in overrides.items()), ""]
    lines += ["| stage | outcome |", "|---|---|"]
    lines += [f"| {stage} | {state} |" for stage, state in outcome.items()]
    return "\n".join(lines) + "\n"


def _run_all(root: str, overrides: dict[str, Any]) -> dict[str, str] | State:
    if overrides:
        prepare = set_overrides(root, overrides, return_state=True)
        if prepare.is_failed():  # a bad override stops the flow before any stage work
            return _failed(prepare)
    for step in (check_params, refresh_source):
        state = step(root, return_state=True)
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
    create_markdown_artifact(
        run_summary(Path(root), outcome, overrides),
        key="training-pipeline",
        description="Test metrics, baseline and gate decision of the run",
    )
    return outcome


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(
    repo_root: str = ".", overrides: dict[str, Any] | None = None
) -> dict[str, str] | State:
    """Run every DVC stage in order, one Prefect task each; returns {stage: outcome}, or a Failed
    state (its data the :class:`StageFailure`) at the first step that fails.

    Args:
        repo_root: the repository to run in (a deployment runs in its working directory).
        overrides: params.yaml keys to set first, e.g. ``{"train.lr": 0.001}``, the way
            ``dvc exp run -S`` sets them (written into params.yaml; checked before any stage).
    """
    root, chosen = str(Path(repo_root).resolve()), dict(overrides or {})
    _drop_empty_tracebacks()
    return holding_workspace(root, "training-pipeline", lambda: _run_all(root, chosen))


def run_pipeline(
    repo_root: str | Path = ".", overrides: dict[str, Any] | None = None
) -> dict[str, str]:
    """The flow for Python callers: {stage: outcome}; raises :class:`StageFailed` on a failure."""
    state = training_pipeline(str(repo_root), overrides, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, StageFailure):
        raise StageFailed(result)
    return state.result()


def parse_overrides(arguments: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` (or ``--set=KEY=VALUE``), repeatable; exits 2 on anything else."""
    overrides: dict[str, Any] = {}
    remaining = list(arguments)
    while remaining:
        flag, _, value = remaining.pop(0).partition("=")
        if flag != "--set" or not (value or remaining):
            problem = f"unknown argument {flag!r}" if flag != "--set" else "--set needs KEY=VALUE"
            print(f"error: {problem}; see python -m flows.pipeline --help", file=sys.stderr)
            raise SystemExit(2)
        try:
            key, parsed = parse_assignment(value or remaining.pop(0))
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        overrides[key] = parsed
    return overrides


def main(arguments: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if arguments is None else arguments
    if arguments and arguments[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    overrides = parse_overrides(arguments)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        outcome = run_pipeline(".", overrides)
    except StageFailed as error:
        raise SystemExit(error.failure.exit_code) from None
    if all(state == SKIPPED for state in outcome.values()):
        print("training-pipeline: every stage up to date")


if __name__ == "__main__":
    main()
