"""The monitor's files: one JSON report and one plot per check.

`reports/monitor/<UTC time>.json` (schema in :func:`build_report`) and `<UTC time>.png` beside it
(the image statistics, predicted labels, confidences and embeddings, reference against served,
each panel titled with its tests). The state between checks (`reports/monitor/state.json`) is
`tasks.monitoring.state`'s.

Light on purpose (no torch, no scipy at import): the Prefect flow imports :func:`report_path`
and reads the report; matplotlib is imported only to draw.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.core.plotting import pyplot, save_figure
from tasks.monitoring.state import MONITOR_FOLDER, ContinualDecision

if TYPE_CHECKING:
    from tasks.monitoring.drift import DriftTest, Sample, Verdict
    from tasks.monitoring.served import ServedLog

TIME_FORMAT = "%Y-%m-%dT%H%M%SZ"  # file names: sortable, no colons
MAX_HISTOGRAM_BINS = 30
FEATURE_UNITS = {
    "mean": "pixel mean of the upload (0-255)",
    "std": "pixel std of the upload (0-255)",
    "width": "width of the upload (px)",
    "height": "height of the upload (px)",
}


def monitor_folder(reports_dir: Path) -> Path:
    return reports_dir / MONITOR_FOLDER


def report_path(reports_dir: Path, moment: datetime) -> Path:
    """reports/monitor/<UTC time>.json for a check made at `moment` (an aware datetime)."""
    return monitor_folder(reports_dir) / f"{moment.astimezone(UTC).strftime(TIME_FORMAT)}.json"


@dataclass(frozen=True)
class ModelSummary:
    """Which model the records and the reference belong to."""

    champion: str
    test_images: int  # the champion's registered test images: labels, confidences, embeddings
    statistics_images: int  # of them, those behind the image statistics
    note: str = ""  # why the image statistics are missing, when they are


def no_champion_records(verdict: Verdict, log: ServedLog, champion: str) -> str | None:
    """The one-line warning when a verdict was reached on records none of which the champion
    served (its model tests were skipped: the verdict rests on the image statistics only)."""
    if verdict.drift is None or not log.records or log.versions.get(champion, 0) > 0:
        return None
    served = ", ".join(f"{version} ({count})" for version, count in sorted(log.versions.items()))
    return (
        f"warning: none of the {len(log.records)} judged record(s) were served by the champion "
        f"{champion or '(none)'} (served by: {served}); its model tests did not run: the service "
        "still serves another model (a failed release, a pinned tag); GET /model says which"
    )


def build_report(
    verdict: Verdict,
    log: ServedLog,
    model: ModelSummary,
    continual: ContinualDecision,
    settings: dict[str, Any],
    plot: Path | None,
) -> dict[str, Any]:
    """The report: ``{"records", "since", "until", "drift" (true, false, or null: no verdict),
    "status", "reason", "warnings" (one line each), "continual": {"drift_in_a_row", "needed",
    "start", "message"}, "tests": [{"name", "drift", "level" (the family-wise level),
    "statistic", "p_value" (raw), "adjusted_p" (Holm), "effect", "effect_value",
    "effect_threshold" (PSI or the mean confidence drop, where the test has one), "samples":
    {"reference", "served"}, "note"?}], "model": {"champion", "records" (of the champion),
    "versions" (records per model_version), "served" (the newest record's model_version),
    "served_is_champion" (null without records)}, "reference": {"test_images",
    "statistics_images", "note"}, "log": {"files", "unreadable_lines"}, "settings"
    (monitor.*), "plot"}``."""
    status = {True: "drift", False: "no drift", None: "no verdict"}[verdict.drift]
    served = log.served_version
    warning = no_champion_records(verdict, log, model.champion)
    return {
        "records": len(log.records),
        "since": log.since.isoformat() if log.since else None,
        "until": log.until.isoformat() if log.until else None,
        "drift": verdict.drift,
        "status": status,
        "reason": verdict.reason,
        "warnings": [warning] if warning else [],
        "continual": continual.as_json(),
        "tests": [test.as_json() for test in verdict.tests],
        "model": {
            "champion": model.champion,
            "records": log.versions.get(model.champion, 0),
            "versions": dict(sorted(log.versions.items())),
            "served": served,
            "served_is_champion": None if served is None else served == model.champion,
        },
        "reference": {
            "test_images": model.test_images,
            "statistics_images": model.statistics_images,
            "note": model.note,
        },
        "log": {"files": log.files, "unreadable_lines": log.unreadable},
        "settings": settings,
        "plot": plot.name if plot else None,
    }


def _title(name: str, tests: list[DriftTest]) -> tuple[str, str]:
    """A panel's title (the tests about `name`) and its colour (red for drift)."""
    parts = []
    for test in tests:
        kind = test.name.split(":")[0]
        if test.adjusted_p is not None:
            part = f"{kind} Holm p={test.adjusted_p:.3g}"
            if test.effect is not None and test.effect_value is not None:
                part += f", {test.effect} {test.effect_value:.3g}"
            parts.append(part)
        else:
            parts.append(f"{kind} skipped")
    colour = "tab:red" if any(test.drift for test in tests) else "black"
    return f"{name}\n{', '.join(parts) or 'not tested'}", colour


def _histogram(axis: Any, before: np.ndarray, now: np.ndarray) -> None:
    values = np.concatenate([before, now])
    edges = np.histogram_bin_edges(values, bins="auto")
    if len(edges) - 1 > MAX_HISTOGRAM_BINS:
        edges = np.histogram_bin_edges(values, bins=MAX_HISTOGRAM_BINS)
    for data, label in ((before, "reference"), (now, "served")):
        if len(data):
            axis.hist(data, bins=edges, density=True, alpha=0.5, label=label)


def _shares(labels: np.ndarray, names: list[str]) -> np.ndarray:
    counts = np.array([np.sum(labels == name) for name in names], dtype=np.float64)
    return counts / max(counts.sum(), 1.0)


def _projection(before: np.ndarray, now: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both embedding sets on the reference's first two principal components."""
    centre = before.mean(axis=0)
    _, _, directions = np.linalg.svd(before - centre, full_matrices=False)
    return (before - centre) @ directions[:2].T, (now - centre) @ directions[:2].T


def plot_distributions(
    reference: Sample, served: Sample, classes: list[str], verdict: Verdict, path: Path
) -> None:
    """One PNG: every image statistic, the predicted labels, the confidences and the embeddings
    (on the reference's first two principal components), reference against served."""
    plt = pyplot()
    figure, axes = plt.subplots(2, 4, figsize=(17, 8))
    panels = list(axes.flat)
    for axis, feature in zip(panels, ("mean", "std", "width", "height"), strict=False):
        empty = np.zeros(0)
        _histogram(axis, reference.features.get(feature, empty), served.features[feature])
        axis.set_xlabel(FEATURE_UNITS[feature])
        title, colour = _title(feature, [t for t in verdict.tests if t.name.endswith(feature)])
        axis.set_title(title, color=colour, fontsize=10)
    label_axis, confidence_axis, embedding_axis, text_axis = panels[4:]
    positions = np.arange(len(classes))
    label_axis.bar(positions - 0.2, _shares(reference.labels, classes), 0.4, label="reference")
    label_axis.bar(positions + 0.2, _shares(served.labels, classes), 0.4, label="served")
    label_axis.set_xticks(positions, classes, fontsize=8)
    label_axis.set_ylabel("share of the predictions")
    _histogram(confidence_axis, reference.confidences, served.confidences)
    confidence_axis.set_xlabel("probability of the predicted class")
    if reference.embeddings is not None and served.embeddings is not None:
        before, now = _projection(reference.embeddings, served.embeddings)
        embedding_axis.scatter(*before.T, s=6, alpha=0.5, label="reference")
        embedding_axis.scatter(*now.T, s=6, alpha=0.5, label="served")
    for axis, name, prefix in (
        (label_axis, "predicted label", "chi2"),
        (confidence_axis, "confidence", "mannwhitney"),
        (embedding_axis, "embeddings (PCA of the reference)", "mmd"),
    ):
        title, colour = _title(name, [t for t in verdict.tests if t.name.startswith(prefix)])
        axis.set_title(title, color=colour, fontsize=10)
    for axis in panels[:7]:
        axis.legend(fontsize=8)
    text_axis.axis("off")
    text_axis.text(0, 1, _wrapped(verdict.reason), va="top", fontsize=10, wrap=True)
    figure.tight_layout()
    save_figure(figure, path)


def _wrapped(text: str, width: int = 40) -> str:
    return "\n".join(textwrap.wrap(text, width))
