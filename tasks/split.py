"""split: a stratified, seeded train/val/test split, packed into one uint8 array file per split.

Run on its own with ``python -m tasks.split`` (after validate).

- Stratified by label and seeded; with `data.group_column` every image of a group (a patient, a
  session, a source video) lands in one split.
- Every class must get a train image and `data.min_per_split` images in val and in test (and,
  with `train.cv_folds` > 1, enough train+val images or groups for every fold); otherwise the
  stage stops with one line naming the classes and what to do, before writing anything.
- Leakage check: images in different splits whose perceptual hashes are within
  `data.near_duplicate_distance` bits are counted and listed in `reports/data/split.json`.
- Channels: what validate resolved `data.channels` to (`channels` in
  reports/data/validation.json: with `auto`, RGB when enough accepted images carry colour), not
  recomputed here; `reports/data/split.json` says which and why.
- Packing: every accepted image is decoded once, converted to those channels, resized to
  `data.image_size` and stored in `data/packed/<split>_x.npy` (N, C, H, W, uint8) with labels in
  `<split>_y.npy`, so training never decodes images one by one and DVC tracks a few files.
- Normalization statistics come from the train split only (`data/packed/meta.json`).
- With `train.cv_folds` > 1, `data/packed/folds.npy` assigns each train+val image a fold.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from pydantic import ValidationError

from tasks.core.config import DataConfig, Params, load_params_or_exit
from tasks.core.errors import UserError, require, shown
from tasks.core.io import read_json, write_json
from tasks.core.layout import SPLITS, Layout
from tasks.core.runner import stage_main
from tasks.data.images import ChannelChoice
from tasks.data.leakage import near_duplicates_across, perceptual_hashes
from tasks.data.packed import MIN_STD, PackedMeta, natural_key, pack
from tasks.data.splitting import assign_folds, assign_splits


def read_channel_choice(layout: Layout, data: DataConfig) -> ChannelChoice:
    """The channels validate resolved `data.channels` to (reports/data/validation.json).

    Raises:
        MissingInput: validate has not run.
        UserError: the report predates `channels` or was made for another `data.channels`.
    """
    path = layout.validation_report
    require(path)
    rerun = "rerun validate (`dvc repro validate`)"
    try:
        choice = ChannelChoice.model_validate(read_json(path).get("channels"))
    except (ValidationError, AttributeError):
        raise UserError(f"{shown(path)} holds no valid channels decision; {rerun}") from None
    if choice.requested != data.channels:
        raise UserError(
            f"{shown(path)} resolved data.channels={choice.requested}, params.yaml now says "
            f"{data.channels}; {rerun}"
        )
    return choice


def split_and_pack(
    manifest: pd.DataFrame,
    params: Params,
    choice: ChannelChoice,
    layout: Layout | None = None,
) -> PackedMeta:
    """Split the accepted images, pack each split at `choice`'s channels, check leakage; write
    data/splits, data/packed and reports/data/split.json. Returns the packed metadata."""
    layout = layout or Layout.discover()
    channels = choice.channels
    data, seed = params.data, params.seed
    manifest = manifest.sort_values("path").reset_index(drop=True)
    manifest["group"] = (
        manifest.get("group", pd.Series([""] * len(manifest))).fillna("").astype(str)
    )
    manifest["split"] = assign_splits(manifest, data, seed)
    classes = sorted(manifest["label"].unique(), key=natural_key)
    class_index = {label: index for index, label in enumerate(classes)}
    fold_of = None
    if params.train.cv_folds > 1:  # folds over train+val (in that order); test stays held out
        pool = pd.concat([manifest[manifest["split"] == name] for name in ("train", "val")])
        pool_labels = pool["label"].map(class_index).to_numpy(dtype=np.int64)
        pool_groups = pool["group"].to_numpy() if data.group_column else None
        # before anything is written: a fold without a class stops the stage here
        fold_of = assign_folds(pool_labels, pool_groups, params.train.cv_folds, seed, classes)
    layout.split_file.parent.mkdir(parents=True, exist_ok=True)
    manifest[["path", "label", "group", "split"]].to_csv(
        layout.split_file, index=False, lineterminator="\n"
    )

    packed_dir = layout.packed_dir
    packed_dir.mkdir(parents=True, exist_ok=True)
    arrays, targets_of, rows_of = {}, {}, {}
    for name in SPLITS:
        rows = manifest[manifest["split"] == name]
        images = pack(list(rows["path"]), layout.raw_files, channels, data.image_size)
        targets = rows["label"].map(class_index).to_numpy(dtype=np.int64)
        np.save(packed_dir / f"{name}_x.npy", images)
        np.save(packed_dir / f"{name}_y.npy", targets)
        arrays[name], targets_of[name], rows_of[name] = images, targets, rows

    folds_file = layout.folds_file
    folds_file.unlink(missing_ok=True)
    if fold_of is not None:
        np.save(folds_file, fold_of)

    every_image = np.concatenate([arrays[name] for name in SPLITS])
    every_split = np.concatenate([[name] * len(arrays[name]) for name in SPLITS])
    every_path = np.concatenate([rows_of[name]["path"].to_numpy() for name in SPLITS])
    leaks, pairs = near_duplicates_across(
        perceptual_hashes(every_image), every_split, data.near_duplicate_distance
    )
    groups_per_split = {
        name: int(rows_of[name]["group"].replace("", np.nan).nunique()) for name in SPLITS
    }
    write_json(
        layout.split_report,
        {
            "counts": {
                name: {
                    str(k): int(v)
                    for k, v in rows_of[name]["label"].value_counts().sort_index().items()
                }
                for name in SPLITS
            },
            "groups": groups_per_split,
            "near_duplicate_distance": data.near_duplicate_distance,
            "near_duplicate_pairs_across_splits": leaks,
            "near_duplicate_examples": [
                {
                    "a": every_path[i],
                    "a_split": every_split[i],
                    "b": every_path[j],
                    "b_split": every_split[j],
                    "distance": d,
                }
                for i, j, d in pairs
            ],
            "cv_folds": params.train.cv_folds,
            "channels": channels,
            "channels_reason": choice.reason,
        },
    )

    train = arrays["train"].astype(np.float64) / 255.0
    meta = PackedMeta.create(
        classes=classes,
        image_size=data.image_size,
        channels=channels,
        mean=[float(v) for v in train.mean(axis=(0, 2, 3))],
        std=[float(max(v, MIN_STD)) for v in train.std(axis=(0, 2, 3))],
        counts={name: len(arrays[name]) for name in SPLITS},
        near_duplicate_pairs_across_splits=leaks,
    )
    meta.save(layout.packed_meta)
    return meta


def main() -> None:
    layout = Layout.discover()
    params = load_params_or_exit(layout.params_file)
    require(layout.validated_manifest, layout.validation_report)
    manifest = pd.read_csv(
        layout.validated_manifest,
        dtype={"path": str, "label": str, "group": str},
        keep_default_na=False,
    )
    choice = read_channel_choice(layout, params.data)
    meta = split_and_pack(manifest, params, choice, layout)
    counts = meta.counts
    print(f"split: channels: {choice.reason}")
    print(
        f"split: train {counts['train']}, val {counts['val']}, test {counts['test']} images "
        f"({len(meta.classes)} classes, {meta.image_size}px, "
        f"{'RGB' if meta.channels == 3 else 'grayscale'}) -> {layout.relative(layout.packed_dir)}"
    )
    leaks = meta.near_duplicate_pairs_across_splits
    if leaks:
        print(
            f"warning: {leaks} near-duplicate pair(s) across splits (perceptual hash distance "
            f"<= {params.data.near_duplicate_distance}); see "
            f"{layout.relative(layout.split_report)}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    stage_main(main)
