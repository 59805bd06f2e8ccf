"""One drift check of the served model: the prediction log since the last check against the
champion's reference, one family-wise verdict (`tasks.monitoring.drift`), written as a JSON
report and a plot, and the count of drift verdicts in a row that starts continual learning
(`tasks.monitoring.state`).

Run with ``python -m tasks.monitoring.run`` in the repository; the Prefect flow
``flows/monitor.py`` (`drift_monitor`) runs this command, reads the report and acts on it
(`"continual": {"start": true}`: `monitor.consecutive` drift verdicts in a row), so the flow
itself never imports torch. Not a DVC stage: the log is not data DVC versions, and every check
must see the records that arrived since the last one.

A log whose newest record comes from another model than the champion makes the reason start
with "served model is not the champion" (`tasks.monitoring.served.served_model_problem`); a
verdict on records none of which the champion served carries a one-line warning (report
"warnings", and printed).

The records judged are those newer than --since, else than the newest record of the last check
that reached a verdict (reports/monitor/state.json), else all of them. Fewer than
`monitor.min_records` give no verdict and leave the state alone, so they count at the next
check. Exit 0 whenever a report was written, whatever its verdict (`"drift"` in the report:
true, false or null for no verdict); 1 for a missing input (no champion yet), 2 for a bad
argument or params.yaml.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.core.config import Params, load_params_or_exit
from tasks.core.errors import shown
from tasks.core.io import write_json
from tasks.core.layout import Layout
from tasks.core.options import parse_options
from tasks.core.runner import (
    print_help,
    stage_help,
    stage_main,
    usage_error,
    wants_help,
)
from tasks.monitoring.drift import judge, too_few
from tasks.monitoring.reference import build_reference
from tasks.monitoring.report import ModelSummary, build_report, plot_distributions, report_path
from tasks.monitoring.served import parse_time, read_log, served_model_problem, served_sample
from tasks.monitoring.state import (
    MonitorState,
    decide_continual,
    read_state,
    state_lock,
    write_state,
)
from tasks.registry.store import load_registry
from tasks.serving.logbook import log_folder

MODULE = "tasks.monitoring.run"
OPTIONS = {
    "--since TIME": "judge the records newer than TIME (ISO 8601; UTC unless it says) instead "
    "of those since the last check",
    "--report PATH": "write the report there (default reports/monitor/<UTC time>.json); the "
    "plot goes beside it",
}
READS = [
    "the prediction log (serve.log_dir, or SIXFOLD_LOG_DIR)",
    "reports/monitor/state.json",
    "models/registry (the champion)",
    "data/validated/manifest.csv, data/splits/split.csv, data/packed/test_x.npy",
    "data/batches/<version>/ (a continual champion's batch test parts)",
    "params.yaml: monitor, serve.log_dir, seed",
]
WRITES = ["reports/monitor/<UTC time>.json and .png", "reports/monitor/state.json"]
USAGE = f"usage: python -m {MODULE} [-h] [--since TIME] [--report PATH]"


def check_drift(
    layout: Layout,
    params: Params,
    since: datetime | None = None,
    report: Path | None = None,
    now: datetime | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Make one check; returns where its report went and the report (see
    `tasks.monitoring.report`). The state is read, decided and written under its lock."""
    now = now or datetime.now(UTC)
    report = report or report_path(layout.reports_dir, now)
    with state_lock(layout.reports_dir):
        state = read_state(layout.reports_dir)
        if since is None and state.until is not None:
            since = parse_time(state.until)
        log = read_log(log_folder(layout.root, params.serve.log_dir), since)
        config = params.monitor
        plot = None
        verdict = too_few(len(log.records), config)
        if verdict is None:  # enough records: now the network is worth loading
            reference = build_reference(layout)
            served = served_sample(log, reference.champion)
            verdict = judge(reference.sample, served, reference.classes, config, params.seed)
            plot = report.with_suffix(".png")
            plot_distributions(reference.sample, served, reference.classes, verdict, plot)
            model = ModelSummary(
                reference.champion,
                reference.test_images,
                reference.statistics_images,
                reference.note,
            )
        else:
            model = ModelSummary(load_registry(layout.registry_dir).champion or "", 0, 0)
        if (problem := served_model_problem(log, model.champion)) is not None:
            verdict = replace(verdict, reason=f"{problem}; {verdict.reason}")  # said first
        count, continual = decide_continual(
            state, verdict.drift, model.champion, config.consecutive
        )
        payload = build_report(verdict, log, model, continual, config.model_dump(), plot)
        payload["created"] = now.isoformat(timespec="seconds")
        write_json(report, payload)
        if verdict.drift is not None and log.until is not None:
            until = log.until.isoformat()
            write_state(layout.reports_dir, MonitorState(until, report.name, model.champion, count))
    return report, payload


def parse_arguments(arguments: Sequence[str]) -> tuple[datetime | None, Path | None]:
    """--since and --report (each as ``--flag value`` or ``--flag=value``)."""
    values = parse_options(arguments, USAGE, valued=("--since", "--report"))
    since = None
    if isinstance(text := values.get("--since"), str):
        try:
            since = parse_time(text)
        except ValueError:
            usage_error(USAGE, f"--since {text!r} is not an ISO 8601 time")
    report = values.get("--report")
    return since, Path(report).resolve() if isinstance(report, str) else None


def main(arguments: Sequence[str] | None = None) -> None:
    arguments = sys.argv[1:] if arguments is None else arguments
    if wants_help(arguments):
        print_help(stage_help(MODULE, __doc__, Layout.discover(), OPTIONS, READS, WRITES))
    since, report = parse_arguments(arguments)

    def work() -> None:
        layout = Layout.discover()
        params = load_params_or_exit(layout.params_file)
        written, payload = check_drift(layout, params, since, report)
        for warning in payload["warnings"]:
            print(f"drift-monitor: {warning}")
        print(f"drift-monitor: {payload['reason']}; report {shown(written)}")
        print(f"drift-monitor: {payload['continual']['message']}")

    stage_main(work, argv=[])


if __name__ == "__main__":
    main()
