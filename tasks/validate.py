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

Only decoding errors make a file ``undecodable``; any other error (a bug, a MemoryError, a raw
file gone missing) stops the stage with its traceback rather than quarantining good data.

Outputs: data/validated/manifest.csv, data/quarantine/{manifest.csv,files/},
reports/data/validation.json and plots in reports/data/.
"""

from __future__ import annotations

import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from tqdm import tqdm

from tasks.core.config import DataConfig, load_params_or_exit
from tasks.core.errors import UserError, require
from tasks.core.io import write_json
from tasks.core.layout import Layout
from tasks.core.plotting import pyplot, save_figure
from tasks.core.runner import stage_main
from tasks.data.images import OversizedImage, UndecodableImage, load_converted, probe
from tasks.data.sources import IGNORED_FILE, IGNORED_REASONS, count_ignored, describe_ignored

REASONS = (
    "undecodable",
    "missing",
    "too_small",
    "too_large",
    "unsafe_path",
    "unknown_label",
    "duplicate",
    "label_conflict",
)


class ValidationFailed(UserError, RuntimeError):
    """Too much of the data was rejected to go on."""


RAW_MANIFEST_SCHEMA = pa.DataFrameSchema(
    {
        "path": pa.Column(str, pa.Check.str_length(min_value=1)),
        "label": pa.Column(str),
        "group": pa.Column(str),
        "sha256": pa.Column(str, pa.Check.str_matches(r"^([0-9a-f]{64})?$")),
        "bytes": pa.Column(int, pa.Check.ge(-1)),
        "status": pa.Column(str, pa.Check.isin(["ok", "unsafe_path", "missing"])),
        "detail": pa.Column(str),
    },
    strict=True,
    coerce=True,
)

IGNORED_SCHEMA = pa.DataFrameSchema(
    {
        "path": pa.Column(str, pa.Check.str_length(min_value=1)),
        "reason": pa.Column(str, pa.Check.isin(IGNORED_REASONS)),
        "detail": pa.Column(str),
    },
    strict=True,
)
IGNORED_EXAMPLES = 20  # in validation.json; data/raw/ignored.csv lists them all


def header_schema(data: DataConfig) -> pa.DataFrameSchema:
    """Checks on what the header tells; each check's name is the quarantine reason."""
    allowed = set(data.classes) if data.classes else None

    def label_known(labels: pd.Series) -> pd.Series:
        known = labels.str.len() > 0
        return known & labels.isin(allowed) if allowed is not None else known

    return pa.DataFrameSchema(
        {
            "label": pa.Column(str, pa.Check(label_known, name="unknown_label")),
            "pixels": pa.Column(int, pa.Check(lambda s: s <= data.max_pixels, name="too_large")),
            "short_side": pa.Column(int, pa.Check(lambda s: s >= data.min_size, name="too_small")),
        }
    )


def statistics_schema(data: DataConfig) -> pa.DataFrameSchema:
    """What every accepted image must satisfy; a failure here is a bug, not bad data."""
    return pa.DataFrameSchema(
        {
            "path": pa.Column(str, unique=True),
            "label": pa.Column(str, pa.Check.str_length(min_value=1)),
            "width": pa.Column(int, pa.Check.ge(data.min_size)),
            "height": pa.Column(int, pa.Check.ge(data.min_size)),
            "mode": pa.Column(str),
            "channels": pa.Column(int, pa.Check.eq(data.channels)),
            "mean": pa.Column(float, pa.Check.in_range(0, 255)),
            "std": pa.Column(float, pa.Check.ge(0)),
            "sha256": pa.Column(str, [pa.Check.str_matches(r"^[0-9a-f]{64}$")], unique=True),
        },
        strict="filter",
    )


def _reasons_from_schema(schema: pa.DataFrameSchema, table: pd.DataFrame) -> dict[int, str]:
    """Run `schema` lazily and map each failing row index to the first reason (in REASONS order)."""
    try:
        schema.validate(table, lazy=True)
        return {}
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases.dropna(subset=["index"])
        found: dict[int, str] = {}
        for index, check in zip(cases["index"], cases["check"], strict=True):
            reason = str(check)
            current = found.get(int(index))
            if current is None or REASONS.index(reason) < REASONS.index(current):
                found[int(index)] = reason
        return found


def validate(manifest: pd.DataFrame, data: DataConfig, files_dir: Path) -> pd.DataFrame:
    """Decide every row of the raw manifest (files under `files_dir`).

    Returns the manifest with columns reason, detail, width, height, mode, channels, mean, std
    ('' reason = accepted).
    """
    table = RAW_MANIFEST_SCHEMA.validate(manifest.fillna(""), lazy=True).reset_index(drop=True)
    table["reason"] = ""
    table.loc[table["status"] == "unsafe_path", "reason"] = "unsafe_path"
    table.loc[table["status"] == "missing", "reason"] = "missing"
    for column, default in (("width", 0), ("height", 0), ("mode", ""), ("mean", 0.0), ("std", 0.0)):
        table[column] = default
    table["channels"] = data.channels

    # 1. header: size and format, without decoding pixels
    for index in table.index[table["reason"] == ""]:
        try:
            width, height, mode, _format = probe(files_dir / table.at[index, "path"])
        except OversizedImage as error:
            table.loc[index, ["reason", "detail"]] = ["too_large", str(error)]
            continue
        except UndecodableImage as error:
            table.loc[index, ["reason", "detail"]] = ["undecodable", str(error)]
            continue
        table.loc[index, ["width", "height", "mode"]] = [width, height, mode]

    # 2. Pandera on what the header told: too_large, too_small, unknown_label
    open_rows = table.index[table["reason"] == ""]
    header = pd.DataFrame(
        {
            "label": table.loc[open_rows, "label"],
            "pixels": table.loc[open_rows, "width"] * table.loc[open_rows, "height"],
            "short_side": np.minimum(table.loc[open_rows, "width"], table.loc[open_rows, "height"]),
        }
    )
    for index, reason in _reasons_from_schema(header_schema(data), header).items():
        width, height = table.at[index, "width"], table.at[index, "height"]
        detail = {
            "too_large": f"{width}x{height} = {width * height} pixels > {data.max_pixels}",
            "too_small": f"{width}x{height}, smallest side < {data.min_size}",
            "unknown_label": f"label {table.at[index, 'label']!r} not in data.classes"
            if table.at[index, "label"]
            else "file is not inside a class folder (no label)",
        }[reason]
        table.loc[index, ["reason", "detail"]] = [reason, detail]

    # 3. full decode of what is left; statistics of the converted pixels
    def decode(index: int) -> tuple[int, np.ndarray | tuple[str, str]]:
        try:
            return index, load_converted(files_dir / table.at[index, "path"], data.channels)
        except OversizedImage as error:  # probe has judged the size: only if the file changed
            return index, ("too_large", str(error))
        except UndecodableImage as error:
            return index, ("undecodable", str(error))

    open_rows = list(table.index[table["reason"] == ""])
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = tqdm(
            pool.map(decode, open_rows), total=len(open_rows), desc="validate", unit="img"
        )
        for index, result in results:
            if isinstance(result, tuple):
                table.loc[index, ["reason", "detail"]] = list(result)
            else:
                table.loc[index, ["mean", "std"]] = [float(result.mean()), float(result.std())]

    # 4. exact duplicates: same bytes and label -> keep the first path; different labels -> none
    survivors = table[table["reason"] == ""].sort_values("path")
    for _sha, group in survivors.groupby("sha256", sort=False):
        if len(group) < 2:
            continue
        if group["label"].nunique() > 1:
            detail = "same bytes under labels " + ", ".join(sorted(group["label"].unique()))
            table.loc[group.index, ["reason", "detail"]] = ["label_conflict", detail]
        else:
            first = group["path"].iloc[0]
            table.loc[group.index[1:], ["reason", "detail"]] = [
                "duplicate",
                f"same bytes as {first}",
            ]

    accepted = table[table["reason"] == ""]
    statistics_schema(data).validate(accepted, lazy=True)
    return table


def class_balance(accepted: pd.DataFrame) -> dict[str, Any]:
    counts = accepted["label"].value_counts().sort_index()
    ratio = float(counts.max() / counts.min()) if len(counts) else 0.0
    return {"counts": {str(k): int(v) for k, v in counts.items()}, "max_min_ratio": ratio}


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


def write_outputs(table: pd.DataFrame, layout: Layout) -> dict[str, Any]:
    """Write the validated manifest and the quarantine (files + manifest); returns the report.

    The report also counts what ingest ignored (`layout.raw_dir`/ignored.csv).
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
    ]
    accepted[columns].to_csv(layout.validated_manifest, index=False, lineterminator="\n")

    if quarantine_dir.exists():
        shutil.rmtree(quarantine_dir)
    (quarantine_dir / "files").mkdir(parents=True)
    quarantined[["path", "label", "reason", "detail"]].to_csv(
        quarantine_dir / "manifest.csv", index=False, lineterminator="\n"
    )
    for path in quarantined["path"][quarantined["sha256"] != ""]:
        destination = quarantine_dir / "files" / path
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files_dir / path, destination)

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
    report = write_outputs(table, layout)
    write_json(layout.validation_report, report)
    plot_report(table, report, layout)
    reasons = ", ".join(f"{k}={v}" for k, v in report["reasons"].items() if v) or "none"
    ignored = describe_ignored(report["ignored"]["reasons"])
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
