"""The drift monitor as a Prefect flow: is what the service sees still what the champion learnt?

Run once with ``python -m flows.monitor`` (``--help`` says more); deployed as `drift-monitor`
(hourly). One check: the prediction log's records since the last check against the champion's
reference, judged by every drift test of `tasks.monitoring.drift`, written to
reports/monitor/<UTC time>.json and .png. The check runs as a child process (``python -m
tasks.monitoring.run``): it needs the network for the embeddings, and flows know no tensors. The
flow names the report, reads its verdict and returns it: True (drift), False (none) or None (too
few records since the last check to tell).

Continual learning is not started here unless asked: `on_drift` names a deployment (e.g.
``continual-learning/continual-learning``) that is started, without its parameters and without
waiting for it, through `prefect.deployments.run_deployment` when drift is found.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.states import Failed, State
from prefect.tasks import exponential_backoff

from flows.stages import StageFailure, python_command, stream
from tasks.core.errors import shown
from tasks.core.io import read_json
from tasks.core.layout import Layout
from tasks.monitoring.report import report_path

CHECK_MODULE = "tasks.monitoring.run"
USAGE = """\
usage: python -m flows.monitor [-h] [--since TIME] [--on-drift DEPLOYMENT]

Check the served model for drift, once, as a Prefect flow (drift-monitor): the prediction log's
records since the last check (reports/monitor/state.json) against the champion's reference
(python -m tasks.monitoring.run in a child process). Writes reports/monitor/<UTC time>.json and
a plot beside it; the last line is the verdict: drift, no drift, or no verdict (fewer records
than monitor.min_records).

options:
  -h, --help               show this message and exit (nothing is run)
  --since TIME             judge the records newer than TIME (ISO 8601) instead
  --on-drift DEPLOYMENT    start this Prefect deployment when drift is found

exit codes: 0 a check was made, whatever its verdict; 1 a missing input (no champion yet: run
the pipeline); 2 a mistake in params.yaml or in the arguments.

environment:
  PREFECT_API_URL  a Prefect server to record the run in; without it Prefect starts a temporary
                   local server for the run
"""


def _is_transient(task: Any, task_run: Any, state: Any) -> bool:
    failure = state.result(raise_on_failure=False)
    return isinstance(failure, StageFailure) and failure.transient


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_condition_fn=_is_transient,
)
def run_check(repo_root: str, report: str, since: str | None) -> dict[str, Any] | State:
    """Run one check in a child process; returns its report, or a Failed state (no traceback:
    the child's own `error: ...` line is in the log)."""
    logger = get_run_logger()

    def forward(text: str, is_progress: bool) -> None:
        if text.strip() and not is_progress:
            level = logging.ERROR if text.lower().startswith("error") else logging.INFO
            logger.log(level, "%s", text.rstrip())

    arguments = ["--report", report, *(["--since", since] if since else [])]
    exit_code = stream(python_command("-m", CHECK_MODULE, *arguments), repo_root, forward)
    if exit_code != 0:
        failure = StageFailure("drift-monitor", exit_code, "the drift check")
        return Failed(message=failure.describe(), data=failure)
    return read_json(report)


@task(cache_policy=NO_CACHE)
def start_deployment(deployment: str) -> str:
    """Start `deployment` (its default parameters) without waiting; returns the flow run's id."""
    flow_run = run_deployment(name=deployment, timeout=0)
    get_run_logger().info("drift-monitor: started %s (flow run %s)", deployment, flow_run.id)
    return str(flow_run.id)


@flow(name="drift-monitor", log_prints=True)
def drift_monitor(
    repo: str = ".", since: str | None = None, on_drift: str | None = None
) -> bool | State | None:
    """One drift check of the served model; returns True (drift), False or None (no verdict),
    or a Failed state whose data is the :class:`StageFailure` of the check.

    Args:
        repo: the repository (its prediction log, registry and reports).
        since: judge the records newer than this ISO 8601 time instead of those since the last
            check.
        on_drift: the deployment to start when drift is found (continual learning); None: only
            report.
    """
    root = Path(repo).resolve()
    report = report_path(Layout.discover(root).reports_dir, datetime.now(UTC))
    state = run_check(str(root), str(report), since, return_state=True)
    if state.is_failed():
        failure = state.result(raise_on_failure=False)
        if isinstance(failure, StageFailure):
            print(f"drift-monitor: {failure.describe()}; its error is above")
            return Failed(message=failure.describe(), data=failure)
        return state  # a bug in the task itself: keep its traceback
    payload = state.result()
    print(f"drift-monitor: {payload['reason']}; report {shown(report)}")
    if payload["drift"] and on_drift:
        start_deployment(on_drift)
    return payload["drift"]


def _options(arguments: list[str]) -> dict[str, str]:
    """--since and --on-drift (``--flag value`` or ``--flag=value``); exits 2 on anything else."""
    values: dict[str, str] = {}
    while arguments:
        flag, _, value = arguments.pop(0).partition("=")
        if flag not in ("--since", "--on-drift") or not (value or arguments):
            print(
                f"error: bad argument {flag!r}; see python -m flows.monitor --help",
                file=sys.stderr,
            )
            raise SystemExit(2)
        values[flag] = value or arguments.pop(0)
    return values


def main(arguments: list[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if arguments is None else arguments)
    if any(argument in ("-h", "--help") for argument in arguments):
        print(USAGE, end="")
        return
    options = _options(arguments)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    state = drift_monitor(".", options.get("--since"), options.get("--on-drift"), return_state=True)
    failure = state.result(raise_on_failure=False)
    if isinstance(failure, StageFailure):
        raise SystemExit(failure.exit_code)
    if state.is_failed():
        state.result()  # a bug: raise it with its traceback


if __name__ == "__main__":
    main()
