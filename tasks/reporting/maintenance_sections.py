"""The report's sections on what happened after the run: the drift monitor's latest checks and
continual learning's decisions.

Their files are written by flows that run after the pipeline, outside DVC
(reports/monitor/<UTC time>.json by the drift monitor, reports/continual/<version>.json by
continual learning; both folders are git-ignored). The report stage cannot declare them as
dependencies: they are no stage's output, and a missing dependency would stop `dvc repro` on a
fresh clone. So the sections read whatever is there when the page is built, say which flow
wrote it and when, and say how to rebuild the page after a newer check or decision. No file at
all is normal (the flows have not run yet): the section says so and is not incomplete.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.reporting.html import (
    ABSENT,
    badge,
    code,
    counted,
    is_number,
    moment,
    note,
    number,
    paragraph,
    percent,
    significant,
    table,
    text,
)
from tasks.reporting.inputs import (
    CONTINUAL_FOLDER,
    MONITOR_FOLDER,
    MONITOR_STATE,
    REGISTRY_FILE,
    SectionInputs,
    Writer,
    dig,
    mapping,
    sequence,
)

MONITOR = Writer("the drift monitor", "make monitor")
CONTINUAL = Writer("continual learning", "python -m flows.continual --batch SOURCE")
REBUILD = "make report"  # rebuilds the page when a check or decision is newer than it
MAX_CHECKS = 10  # newest first; every check stays in reports/monitor/
MAX_DECISIONS = 10
# the monitor's plot sits beside its report: a plain file name, nothing that leaves the folder
PLOT_NAME = re.compile(r"[A-Za-z0-9_.-]+\.png")
VERDICT_GOOD = {"drift": False, "no drift": True}  # no verdict: neither


def flow_reports(folder: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """The JSON files directly in `folder` (none when it does not exist), by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if p.is_file() and p.name not in skip)


def _source(inputs: SectionInputs, folder: Path, writer: Writer, what: str) -> str:
    """Where a section's files come from, and why a newer one needs a rebuilt page."""
    return note(
        f"Written by {text(writer.name)} ({code(writer.command)}) after the pipeline's run, "
        f"outside DVC: {code(inputs.name(folder) + '/')} is no stage's output, so {text(what)} "
        f"made after this page was built show once it is rebuilt ({code(REBUILD)}).",
        "info",
    )


def _read_all(
    inputs: SectionInputs, paths: list[Path], writer: Writer
) -> list[tuple[Path, dict[str, Any]]]:
    """The readable reports among `paths`, each with its file (an unreadable one becomes a note
    of the section)."""
    reports = []
    for path in paths:
        report = inputs.json(path, writer)
        if report is not None:
            reports.append((path, report))
    return reports


def drift_checks(inputs: SectionInputs) -> str:
    """The latest checks (newest first) and the tests of the newest one with a verdict."""
    folder = inputs.layout.reports_dir / MONITOR_FOLDER
    paths = flow_reports(folder, skip=(MONITOR_STATE,))
    parts = [_source(inputs, folder, MONITOR, "checks")]
    if not paths:
        return parts[0] + paragraph(
            f"No drift check when this page was built: {code('make monitor')} (or the hourly "
            f"{code('drift-monitor')} deployment) compares the service's prediction log with the "
            f"champion's training data and writes {code(inputs.name(folder) + '/<UTC time>.json')}."
        )
    # newest first: by the time the monitor recorded, then by the file's name (its UTC time)
    checks = sorted(
        _read_all(inputs, paths, MONITOR),
        key=lambda item: (str(item[1].get("created") or ""), item[0].name),
        reverse=True,
    )
    drifted = sum(1 for _, check in checks if check.get("drift") is True)
    parts.append(
        paragraph(
            f"{counted(len(checks), 'check')} in {code(inputs.name(folder) + '/')}, "
            f"{drifted} with drift"
            + (f"; the newest {MAX_CHECKS} shown" if len(checks) > MAX_CHECKS else "")
            + "."
        )
    )
    rows = [
        [
            moment(check.get("created")),
            _verdict(check.get("status")),
            number(check.get("records")),
            f"{moment(check.get('since'))} &ndash; {moment(check.get('until'))}",
            code(dig(check, "model", "champion")),
            text(check.get("reason")),
            code(path.name),
        ]
        for path, check in checks[:MAX_CHECKS]
    ]
    headers = ["checked", "verdict", "records", "served between", "champion", "reason", "file"]
    parts.append(table(headers, rows, numeric=[2]))
    judged = next((check for _, check in checks if isinstance(check.get("drift"), bool)), None)
    if judged is not None:
        parts.append(_tests(inputs, judged, folder))
    return "".join(parts)


def _verdict(status: object) -> str:
    return badge(status, VERDICT_GOOD.get(str(status))) if status is not None else ABSENT


def _tests(inputs: SectionInputs, check: dict[str, Any], folder: Path) -> str:
    """The tests of one check, each with its raw and Holm-adjusted p-value, its effect size and
    thresholds, and its samples; its plot."""
    rows = []
    for test in sequence(check, "tests"):
        if not isinstance(test, dict):
            continue
        drift = test.get("drift")
        samples = mapping(test, "samples")
        effect = test.get("effect")
        rows.append(
            [
                text(test.get("name")),
                badge("drift" if drift else "no drift", not drift)
                if isinstance(drift, bool)
                else ABSENT,
                significant(test.get("p_value"), 3),
                significant(test.get("adjusted_p"), 3),
                significant(test.get("level"), 3),
                f"{text(effect)} {significant(test.get('effect_value'), 3)}" if effect else "",
                significant(test.get("effect_threshold"), 3) if effect else "",
                f"{number(samples.get('reference'))} / {number(samples.get('served'))}",
                text(test.get("note")) if test.get("note") else "",
            ]
        )
    headers = ["test", "result", "p-value", "Holm-adjusted p", "level", "effect size"]
    headers += ["effect threshold", "reference / served samples", "note"]
    parts = [
        f"<h3>Tests of the newest check with a verdict ({moment(check.get('created'))})</h3>",
        paragraph(
            "One family-wise verdict: drift when a test's Holm-adjusted p is at most the level "
            "(monitor.false_alarm_rate) and, where it has one, its effect size is above its "
            "threshold. " + text(dig(check, "continual", "message") or "")
        ),
        table(headers, rows, numeric=[2, 3, 4, 6, 7]),
    ]
    plot = check.get("plot")
    if isinstance(plot, str) and PLOT_NAME.fullmatch(plot):
        caption = "reference (the champion's test images) against served, panels titled by test"
        parts.append(inputs.figure(folder / plot, caption, MONITOR))
    return "".join(parts)


def continual_decisions(inputs: SectionInputs) -> str:
    """Every round of continual learning (newest first): the batch, the four accuracies, the
    decision and its first reason."""
    folder = inputs.layout.reports_dir / CONTINUAL_FOLDER
    paths = flow_reports(folder)
    source = _source(inputs, folder, CONTINUAL, "decisions")
    if not paths:
        return source + paragraph(
            "No continual-learning decision when this page was built: continual learning "
            "fine-tunes the champion on a new labelled batch (started by hand or by the drift "
            f"monitor's {code('--on-drift')}) and writes "
            f"{code(inputs.name(folder) + '/<version>.json')}."
        )
    registry = inputs.optional_json(inputs.layout.registry_dir / REGISTRY_FILE)
    decided = _decision_times(registry)
    rounds = []
    for path, report in _read_all(inputs, paths, CONTINUAL):
        when = decided.get(str(report.get("challenger")))
        recorded = "registry" if when else "file"
        if when is None:
            modified = path.stat().st_mtime
            when = datetime.fromtimestamp(modified, UTC).isoformat(timespec="seconds")
        rounds.append((when, recorded, report))
    rounds.sort(key=lambda item: str(item[0]), reverse=True)
    promoted = sum(1 for _, _, report in rounds if report.get("promoted") is True)
    parts = [
        source,
        paragraph(
            f"{counted(len(rounds), 'round')}, {promoted} promoted. The time is the "
            "registry's record of the decision, else (marked <i>file</i>) when the report file "
            "was written. Each challenger is also in the registry's history above."
        ),
    ]
    rows = []
    for when, recorded, report in rounds[:MAX_DECISIONS]:
        decision = report.get("decision")
        reasons = sequence(report, "reasons")
        reason = text(reasons[0]) if reasons else ABSENT
        if report.get("bento_error"):
            reason += " " + badge("bento failed", False)
        rows.append(
            [
                moment(when) + (" <i>file</i>" if recorded == "file" else ""),
                code(report.get("version")),
                badge(decision, decision == "promoted") if decision else ABSENT,
                code(report.get("challenger")),
                code(report.get("champion")),
                code(report.get("champion_after")),
                _change(mapping(report, "accuracy", "new_test")),
                _change(mapping(report, "accuracy", "old_test")),
                _batch(report),
                reason,
            ]
        )
    headers = ["decided", "batch", "decision", "challenger", "champion", "champion after"]
    headers += ["batch test part", "old test split", "batch images", "first reason"]
    parts.append(table(headers, rows))
    errors = [report for _, _, report in rounds[:MAX_DECISIONS] if report.get("bento_error")]
    parts.extend(note(text(report.get("bento_error")), "bad") for report in errors)
    return "".join(parts)


def _decision_times(registry: dict[str, Any] | None) -> dict[str, str]:
    """Model id -> the time of the registry's latest decision about it (promoted or rejected)."""
    times: dict[str, str] = {}
    for event in sequence(registry, "events"):
        if isinstance(event, dict) and event.get("kind") in ("promoted", "rejected"):
            times[str(event.get("candidate"))] = str(event.get("time"))
    return times


def _change(scores: dict[str, Any]) -> str:
    """`champion -> challenger` accuracy on one test set, and its number of images."""
    before, after = scores.get("champion"), scores.get("challenger")
    if not (is_number(before) or is_number(after)):
        return ABSENT
    images = scores.get("images")
    return f"{percent(before)} &rarr; {percent(after)}" + (
        f" ({number(images)} images)" if images is not None else ""
    )


def _batch(report: dict[str, Any]) -> str:
    """The batch's train and test parts, what was quarantined, and the replayed old images."""
    batch = mapping(report, "batch")
    return (
        f"{number(batch.get('train'))} train + {number(batch.get('test'))} test, "
        f"{number(batch.get('quarantined'))} quarantined, "
        f"{number(report.get('replay_images'))} replayed"
    )
