"""Judging ingested files: accept each one or quarantine it with exactly one reason.

The validate stage runs this on `data/raw`; continual learning (`tasks.continual`) runs the
same code on a new labelled batch, so a batch is judged exactly as the training data was.
Reasons, in the order a file meets them: undecodable, missing, too_small, too_large,
unsafe_path, unknown_label, duplicate, label_conflict (see `tasks/validate.py`).
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from tqdm import tqdm

from tasks.core.config import DataConfig
from tasks.data.images import (
    ChannelChoice,
    OversizedImage,
    UndecodableImage,
    choose_channels,
    colour,
    load_conversions,
    probe,
)

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
    same_for_all = pa.Check(lambda s: s.nunique() <= 1, name="same_for_every_image")
    channel_checks = [pa.Check.isin([1, 3]), same_for_all]
    if data.channels != "auto":  # auto: whichever the accepted images' colour decided
        channel_checks.append(pa.Check.eq(data.channels))
    return pa.DataFrameSchema(
        {
            "path": pa.Column(str, unique=True),
            "label": pa.Column(str, pa.Check.str_length(min_value=1)),
            "width": pa.Column(int, pa.Check.ge(data.min_size)),
            "height": pa.Column(int, pa.Check.ge(data.min_size)),
            "mode": pa.Column(str),
            "channels": pa.Column(int, channel_checks),
            "mean": pa.Column(float, pa.Check.in_range(0, 255)),
            "std": pa.Column(float, pa.Check.ge(0)),
            "colour": pa.Column(float, pa.Check.in_range(0, 255)),
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

    Returns the manifest with columns reason, detail, width, height, mode, channels, mean, std,
    colour ('' reason = accepted). `channels` is `data.channels` resolved on the accepted images
    (:func:`channel_choice`); mean and std are of the pixels converted to it, as the service
    converts an upload to its model's channels before it logs the same two numbers.
    """
    table = RAW_MANIFEST_SCHEMA.validate(manifest.fillna(""), lazy=True).reset_index(drop=True)
    table["reason"] = ""
    table.loc[table["status"] == "unsafe_path", "reason"] = "unsafe_path"
    table.loc[table["status"] == "missing", "reason"] = "missing"
    defaults = {"width": 0, "height": 0, "mode": "", "mean": 0.0, "std": 0.0, "colour": 0.0}
    for column, default in defaults.items():
        table[column] = default

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

    # 3. full decode of what is left: its colour (from RGB) and the statistics of its pixels at
    # each channel count `data.channels` may resolve to (auto is decided on the accepted images)
    wanted = (1, 3) if data.channels == "auto" else (data.channels,)
    statistics: dict[int, dict[int, tuple[float, float]]] = {}  # row -> channels -> mean, std

    def decode(index: int) -> tuple[int, tuple[float, dict[int, tuple[float, float]]] | list[str]]:
        path = files_dir / table.at[index, "path"]
        try:
            arrays = load_conversions(path, tuple(sorted({3, *wanted})))
        except OversizedImage as error:  # probe has judged the size: only if the file changed
            return index, ["too_large", str(error)]
        except UndecodableImage as error:
            return index, ["undecodable", str(error)]
        moments = {
            count: (float(arrays[count].mean()), float(arrays[count].std())) for count in wanted
        }
        return index, (colour(arrays[3]), moments)

    open_rows = list(table.index[table["reason"] == ""])
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = tqdm(
            pool.map(decode, open_rows), total=len(open_rows), desc="validate", unit="img"
        )
        for index, result in results:
            if isinstance(result, list):
                table.loc[index, ["reason", "detail"]] = result
            else:
                table.at[index, "colour"], statistics[index] = result

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

    # 5. the channels: data.channels, auto resolved on the accepted images' colour
    channels = channel_choice(table, data).channels
    table["channels"] = channels
    decoded = list(statistics)
    table.loc[decoded, "mean"] = [statistics[index][channels][0] for index in decoded]
    table.loc[decoded, "std"] = [statistics[index][channels][1] for index in decoded]
    accepted = table[table["reason"] == ""]
    statistics_schema(data).validate(accepted, lazy=True)
    return table


def channel_choice(table: pd.DataFrame, data: DataConfig) -> ChannelChoice:
    """`data.channels` resolved on the colour of `table`'s accepted rows (a validated table)."""
    accepted = table.loc[table["reason"] == "", "colour"]
    return choose_channels(data.channels, [float(value) for value in accepted])


def class_balance(accepted: pd.DataFrame) -> dict[str, Any]:
    counts = accepted["label"].value_counts().sort_index()
    ratio = float(counts.max() / counts.min()) if len(counts) else 0.0
    return {"counts": {str(k): int(v) for k, v in counts.items()}, "max_min_ratio": ratio}


def write_quarantine(quarantined: pd.DataFrame, files_dir: Path, quarantine_dir: Path) -> None:
    """`quarantine_dir`/manifest.csv (path, label, reason, detail) and a copy of every
    quarantined file that was ingested (under `quarantine_dir`/files), replacing what was there."""
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
