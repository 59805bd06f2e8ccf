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
waiting for it, through `prefect.deployments.run_deployment` once `monitor.consecutive` drift
verdicts came in a row (the report's ``"continual": {"start": true}``, counted in
reports/monitor/state.json by `tasks.monitoring.state`): one drift verdict alone, which clean
traffic gives in at most `monitor.false_alarm_rate` of the checks, starts nothing. The check
runs holding the workspace (`flows.workspace`: it writes the monitor's state), which is given
back before continual learning is started, so that run can take it.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.states import State

from flows.stages import (
    TRANSIENT_RETRIES,
    exit_like,
    python_command,
    reported_failure,
    run_in_child,
)
from flows.workspace import holding_workspace
from tasks.core.errors import shown
from tasks.core.io import read_json
from tasks.core.layout import Layout
from tasks.core.options import parse_options
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
  --on-drift DEPLOYMENT    start this Prefect deployment after monitor.consecutive drift
                           verdicts in a row

exit codes: 0 a check was made, whatever its verdict; 1 a missing input (no champion yet: run
the pipeline); 2 a mistake in params.yaml or in the arguments; 75 another run (training,
continual learning) holds the workspace: one line names it, nothing was checked, try again later.

environment:
  PREFECT_API_URL  a Prefect server to record the run in; without it Prefect starts a temporary
                   local server for the run
"""


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def run_check(repo_root: str, report: str, since: str | None) -> dict[str, Any] | State:
    """Run one check in a child process; returns its report, or a Failed state."""
    arguments = ["--report", report, *(["--since", since] if since else [])]
    command = python_command("-m", CHECK_MODULE, *arguments)
    failed = run_in_child(command, repo_root, "drift-monitor", "the drift check")
    return failed or read_json(report)


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
        on_drift: the deployment to start after `monitor.consecutive` drift verdicts in a row
            (continual learning); None: only report.
    """
    root = Path(repo).resolve()
    checked = holding_workspace(root, "drift-monitor", lambda: _check(root, since))
    if isinstance(checked, State):
        return checked
    due = bool(checked["continual"]["start"])
    if due and on_drift:  # the workspace is free again: the run started can take it
        start_deployment(on_drift)
    elif due:
        print("drift-monitor: continual learning is due, but no --on-drift deployment is named")
    return checked["drift"]


def _check(root: Path, since: str | None) -> dict[str, Any] | State:
    """The check itself, run while the flow holds the workspace: its report or a Failed state."""
    report = report_path(Layout.discover(root).reports_dir, datetime.now(UTC))
    state = run_check(str(root), str(report), since, return_state=True)
    if state.is_failed():
        return reported_failure(state, "drift-monitor")
    payload = state.result()
    for warning in payload.get("warnings", []):
        get_run_logger().warning("drift-monitor: %s", warning)
    print(f"drift-monitor: {payload['reason']}; report {shown(report)}")
    print(f"drift-monitor: {payload['continual']['message']}")
    return payload


FLAGS = ("--since", "--on-drift")


def _options(arguments: list[str]) -> dict[str, str | bool]:
    """--since and --on-drift (``--flag value`` or ``--flag=value``); exits 2 on anything else."""
    return parse_options(arguments, USAGE.splitlines()[0], valued=FLAGS)


def main(arguments: list[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if arguments is None else arguments)
    if any(argument in ("-h", "--help") for argument in arguments):
        print(USAGE, end="")
        return
    options = _options(arguments)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    since, on_drift = (str(options[flag]) if flag in options else None for flag in FLAGS)
    exit_like(drift_monitor(".", since, on_drift, return_state=True))


if __name__ == "__main__":
    main()
