"""`reports/continual/<version>.json`, its plot and its one line.

What a caller (the Prefect flow, `make drift-demo`) reads from the report: ``promoted`` (bool),
``challenger`` and ``champion`` (ids; ``champion_after`` is the registry's champion after the
decision), and ``accuracy.old_test`` / ``accuracy.new_test``, each ``{"champion",
"challenger", "difference", "images", "wins", "losses"}`` (accuracies as fractions; wins: images
the challenger gets right and the champion wrong, losses the reverse: what the gate's paired
rule decides on). The batch's counts (quarantined with reasons, leakage dropped) are under
``batch``, the rules under ``rules``; ``replay_excluded`` counts the old train images left out of
replay because they are in a registered test set (``exact``, ``near``, and ``test_sets``
compared with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.core.layout import Layout
from tasks.core.plotting import pyplot, save_figure


def report_file(layout: Layout, version: str) -> Path:
    return layout.reports_dir / "continual" / f"{version}.json"


def plot_accuracies(report: dict[str, Any], path: Path) -> None:
    """Bars: champion and challenger accuracy on the old test split and the batch's test part."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.2))
    sets = [("old test split", "old_test"), ("batch test part", "new_test")]
    for offset, (who, colour) in enumerate((("champion", "#8c8c8c"), ("challenger", "#4c72b0"))):
        values = [report["accuracy"][key][who] for _, key in sets]
        positions = [index + (offset - 0.5) * 0.38 for index in range(len(sets))]
        bars = axis.bar(positions, values, width=0.38, color=colour, label=who)
        axis.bar_label(bars, labels=[f"{value:.3f}" for value in values], fontsize=7)
    axis.set_xticks(range(len(sets)), [name for name, _ in sets])
    axis.set(
        ylim=(0, 1.1), ylabel="accuracy", title=f"batch {report['version']}: {report['decision']}"
    )
    axis.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)


def _excluded(report: dict[str, Any]) -> str:
    """ " (n registered test images left out)", when replay left any out."""
    excluded = report.get("replay_excluded") or {}
    left_out = int(excluded.get("exact", 0)) + int(excluded.get("near", 0))
    return f" ({left_out} registered test images left out)" if left_out else ""


def summary_line(report: dict[str, Any]) -> str:
    """One line: the decision and the four accuracies."""
    old, new = report["accuracy"]["old_test"], report["accuracy"]["new_test"]
    batch = report["batch"]
    figures = (
        f"new test part {new['champion']:.4f} -> {new['challenger']:.4f}, old test split "
        f"{old['champion']:.4f} -> {old['challenger']:.4f}; batch {report['version']}: "
        f"{batch['train']} train + {batch['test']} test images, {batch['quarantined']} "
        f"quarantined, {report['replay_images']} replayed{_excluded(report)}"
    )
    if report["promoted"]:
        bento = f"; bento {report['bento']}" if report.get("bento") else ""
        who = f"{report['challenger']} over {report['champion']}"
        return f"continual: promoted {who} ({figures}){bento}"
    return (
        f"continual: kept champion {report['champion']}, rejected {report['challenger']}: "
        f"{report['reasons'][0]} ({figures})"
    )
