"""validate: accept or quarantine every ingested file, with exactly one reason each.

Run on its own with ``python -m tasks.validate`` (after ingest).

Reasons: undecodable, missing, too_small, too_large, unsafe_path, unknown_label, duplicate,
label_conflict. ``missing`` is a file the source lists (or a symlink to nothing) that does not
exist: ingest never copied it, and a user looks for it in a different place than for a broken
image, so it is counted apart.
Sizes are judged from the image header before any pixel is decoded, so a decompression bomb
costs a few kilobytes of memory. Pandera schemas check the manifest and the per-image
statistics table lazily (every failure collected, not only the first).

What a folder source held that is not data (hidden names, symlinked folders, ...: ingest's
data/raw/ignored.csv) is counted in the report's ``ignored`` (count, per reason, examples), so
``accepted + quarantined + ignored.count`` is every entry under the source.

``data.channels: auto`` is decided here, on the accepted images: each one's colour (mean chroma,
the manifest's ``colour`` column) is measured while it is decoded anyway, and the report's
``channels`` says what was chosen and why; the split stage packs at those channels.

Only decoding errors make a file ``undecodable``; any other error (a bug, a MemoryError, a raw
file gone missing) stops the stage with its traceback rather than quarantining good data.

Outputs: data/validated/manifest.csv, data/quarantine/{manifest.csv,files/},
reports/data/validation.json and plots in reports/data/.
"""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd
import pandera.pandas as pa

from tasks.core.config import DataConfig, load_params_or_exit
from tasks.core.errors import UserError, require
from tasks.core.io import write_json
from tasks.core.layout import Layout
from tasks.core.plotting import pyplot, save_figure
from tasks.core.runner import stage_main
from tasks.data.images import UndecodableImage, load_converted
from tasks.data.sources import IGNORED_FILE, IGNORED_REASONS, count_ignored, describe_ignored
from tasks.data.validation import (
    REASONS,
    channel_choice,
    class_balance,
    validate,
    write_quarantine,
)


class ValidationFailed(UserError, RuntimeError):
    """Too much of the data was rejected to go on."""


IGNORED_SCHEMA = pa.DataFrameSchema(
    {
        "path": pa.Column(str, pa.Check.str_length(min_value=1)),
        "reason": pa.Column(str, pa.Check.isin(IGNORED_REASONS)),
        "detail": pa.Column(str),
    },
    strict=True,
)
IGNORED_EXAMPLES = 20  # in validation.json; data/raw/ignored.csv lists them all


def read_ignored(layout: Layout) -> pd.DataFrame:
    """Ingest's list of what the source holds that is not data (path, reason, detail)."""
    path = layout.raw_dir / IGNORED_FILE
    require(path)
    ignored = pd.read_csv(path, dtype=str, keep_default_na=False)
    return IGNORED_SCHEMA.validate(ignored, lazy=True)


def ignored_report(ignored: pd.DataFrame) -> dict[str, Any]:
    """Count per reason and up to IGNORED_EXAMPLES examples, taken from each reason in turn."""
    ordered = ignored.sort_values("path", kind="stable")
    turn = ordered.groupby("reason").cumcount()  # 0 for each reason's first path, 1, ...
    examples = ordered.loc[turn.sort_values(kind="stable").index[:IGNORED_EXAMPLES]]
    return {
        "count": len(ignored),
        "reasons": count_ignored(ignored["reason"]),
        "examples": examples.sort_values("path").to_dict(orient="records"),
    }


def write_outputs(table: pd.DataFrame, layout: Layout, data: DataConfig) -> dict[str, Any]:
    """Write the validated manifest and the quarantine (files + manifest); returns the report.

    The report also counts what ingest ignored (`layout.raw_dir`/ignored.csv) and holds the
    channels `data.channels` resolved to, with its figures (what the split stage packs at).
    """
    accepted = table[table["reason"] == ""]
    quarantined = table[table["reason"] != ""]
    files_dir, quarantine_dir = layout.raw_files, layout.quarantine_dir
    layout.validated_manifest.parent.mkdir(parents=True, exist_ok=True)
    columns = [
        "path",
        "label",
        "group",
        "sha256",
        "bytes",
        "width",
        "height",
        "mode",
        "mean",
        "std",
        "colour",
    ]
    accepted[columns].to_csv(layout.validated_manifest, index=False, lineterminator="\n")

    write_quarantine(quarantined, files_dir, quarantine_dir)

    total, n_accepted, n_quarantined = len(table), len(accepted), len(quarantined)
    assert n_accepted + n_quarantined == total, "validate lost track of a file"
    return {
        "total": total,
        "accepted": n_accepted,
        "quarantined": n_quarantined,
        "quarantined_fraction": n_quarantined / total if total else 0.0,
        "reasons": {reason: int((quarantined["reason"] == reason).sum()) for reason in REASONS},
        "ignored": ignored_report(read_ignored(layout)),
        "class_balance": class_balance(accepted),
        "channels": channel_choice(table, data).model_dump(mode="json"),
    }


def plot_report(table: pd.DataFrame, report: dict[str, Any], layout: Layout) -> None:
    """Class balance, image sizes and a grid of quarantined examples, as PNGs in reports/data/."""
    plt = pyplot()
    files_dir, report_dir = layout.raw_files, layout.data_reports
    counts = report["class_balance"]["counts"]
    figure, axis = plt.subplots(figsize=(max(4, 0.5 * len(counts) + 2), 3))
    axis.bar(list(counts), list(counts.values()), color="#4c72b0")
    axis.set(title="accepted images per class", xlabel="label", ylabel="images")
    figure.tight_layout()
    save_figure(figure, report_dir / "class_balance.png")

    accepted = table[table["reason"] == ""]
    figure, axis = plt.subplots(figsize=(4, 3))
    axis.scatter(accepted["width"], accepted["height"], s=8, alpha=0.4)
    axis.set(title="image sizes (accepted)", xlabel="width", ylabel="height")
    figure.tight_layout()
    save_figure(figure, report_dir / "image_sizes.png")

    quarantined = table[table["reason"] != ""].head(24)
    columns = 6
    rows = max(1, -(-len(quarantined) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.8), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (_index, row) in zip(axes.flat, quarantined.iterrows(), strict=False):
        shown = False
        if (
            row["reason"] not in {"too_large", "unsafe_path", "undecodable", "missing"}
            and row["sha256"]
        ):
            try:
                axis.imshow(load_converted(files_dir / row["path"], 3))
                shown = True
            except UndecodableImage:
                pass
        if not shown:
            axis.text(0.5, 0.5, "not shown", ha="center", va="center", fontsize=7)
        axis.set_title(f"{row['reason']}\n{row['path'][-18:]}", fontsize=6)
    if quarantined.empty:
        axes.flat[0].text(0.5, 0.5, "nothing quarantined", ha="center", va="center")
    figure.tight_layout()
    save_figure(figure, report_dir / "quarantine.png")


def main() -> None:
    layout = Layout.discover()
    params = load_params_or_exit(layout.params_file)
    require(layout.raw_manifest, layout.raw_dir / IGNORED_FILE)
    manifest = pd.read_csv(layout.raw_manifest, dtype=str, keep_default_na=False)
    table = validate(manifest, params.data, layout.raw_files)
    report = write_outputs(table, layout, params.data)
    write_json(layout.validation_report, report)
    plot_report(table, report, layout)
    reasons = ", ".join(f"{k}={v}" for k, v in report["reasons"].items() if v) or "none"
    ignored = describe_ignored(report["ignored"]["reasons"])
    print(f"validate: channels: {report['channels']['reason']}")
    print(
        f"validate: {report['total']} files: {report['accepted']} accepted, "
        f"{report['quarantined']} quarantined ({reasons})"
        + (f"; {ignored}" if ignored else "")
        + f" -> {layout.relative(layout.validated_manifest)}"
    )
    ratio = report["class_balance"]["max_min_ratio"]
    if ratio > params.data.imbalance_warn:
        print(
            f"warning: class imbalance {ratio:.1f}x (largest/smallest class) exceeds "
            f"data.imbalance_warn={params.data.imbalance_warn}; see "
            f"{layout.relative(layout.data_reports / 'class_balance.png')}",
            file=sys.stderr,
        )
    if report["quarantined_fraction"] > params.data.max_quarantined_fraction:
        raise ValidationFailed(
            f"{report['quarantined']}/{report['total']} files quarantined "
            f"({report['quarantined_fraction']:.0%}) > data.max_quarantined_fraction="
            f"{params.data.max_quarantined_fraction}; see "
            f"{layout.relative(layout.validation_report)} and "
            f"{layout.relative(layout.quarantine_dir / 'manifest.csv')}"
        )


if __name__ == "__main__":
    stage_main(main)
