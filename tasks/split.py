"""split: a stratified, seeded train/val/test split, packed into one uint8 array file per split.

Run on its own with ``python -m tasks.split`` (after validate).

- Stratified by label and seeded; with `data.group_column` every image of a group (a patient, a
  session, a source video) lands in one split.
- Leakage check: images in different splits whose perceptual hashes are within
  `data.near_duplicate_distance` bits are counted and listed in `reports/data/split.json`.
- Packing: every accepted image is decoded once, converted to `data.channels`, resized to
  `data.image_size` and stored in `data/packed/<split>_x.npy` (N, C, H, W, uint8) with labels in
  `<split>_y.npy`, so training never decodes images one by one and DVC tracks a few files.
- Normalization statistics come from the train split only (`data/packed/meta.json`).
- With `train.cv_folds` > 1, `data/packed/folds.npy` assigns each train+val image a fold.
"""

from __future__ import annotations

import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import (
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)
from tqdm import tqdm

from tasks.cli import UserError, stage_main
from tasks.config import DataConfig, Params, load_params_or_exit
from tasks.datasets import PACKED_DIR, RAW_FILES, SPLITS, VALIDATED_MANIFEST, require
from tasks.images import load_converted, resize
from tasks.io import write_json

SPLIT_FILE = Path("data/splits/split.csv")
SPLIT_REPORT = Path("reports/data/split.json")


class SplitError(UserError, ValueError):
    """The accepted data cannot be split as configured."""


def assign_splits(manifest: pd.DataFrame, data: DataConfig, seed: int) -> pd.Series:
    """Stratified split; returns the split name for every row of `manifest`."""
    counts = manifest["label"].value_counts()
    if len(counts) < 2:
        raise SplitError(
            f"split: the accepted images hold {len(counts)} class(es) "
            f"({', '.join(map(str, counts.index))}); a classifier needs at least 2"
        )
    too_few = counts[counts < 3]
    if not too_few.empty:
        raise SplitError(
            f"split: class(es) {sorted(too_few.index)} have fewer than 3 accepted images "
            "(one per split is needed); add images or remove the class"
        )
    indices = np.arange(len(manifest))
    labels = manifest["label"].to_numpy()
    held_out = data.val_fraction + data.test_fraction
    if data.group_column:
        groups = manifest["group"].to_numpy()
        if (groups == "").any():
            raise SplitError(
                f"split: some images have no value in data.group_column={data.group_column!r}"
            )
        first, second = _folds_for(held_out), _folds_for(data.test_fraction / held_out)
        distinct = len(np.unique(groups))
        if distinct < first * second:
            raise SplitError(
                f"split: data.group_column={data.group_column!r} gives {distinct} group(s); "
                f"holding out whole groups for validation and test needs at least "
                f"{first * second} ({first} folds, then {second}); add groups, change "
                "data.val_fraction/data.test_fraction, or unset data.group_column"
            )
        train_idx, rest_idx = _group_split(indices, labels, groups, first, seed)
        val_part, test_part = _group_split(
            np.arange(len(rest_idx)), labels[rest_idx], groups[rest_idx], second, seed
        )
        val_idx, test_idx = rest_idx[val_part], rest_idx[test_part]
    else:
        try:
            train_idx, rest_idx = train_test_split(
                indices, test_size=held_out, stratify=labels, random_state=seed
            )
            val_idx, test_idx = train_test_split(
                rest_idx,
                test_size=data.test_fraction / held_out,
                stratify=labels[rest_idx],
                random_state=seed,
            )
        except ValueError as error:  # a class too small for the fractions
            raise SplitError(
                f"split: cannot stratify {len(manifest)} images over {len(counts)} classes "
                f"with data.val_fraction={data.val_fraction} and "
                f"data.test_fraction={data.test_fraction} ({error}); add images to the "
                "smallest classes or raise the fractions"
            ) from None
    for name, part in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        if len(part) == 0:
            raise SplitError(f"split: the {name} split came out empty; add images or groups")
    missing = sorted(set(labels) - set(labels[train_idx]))
    if missing:
        raise SplitError(
            f"split: class(es) {missing} have no image in the train split (their groups were "
            "all held out); add groups for them or change the seed"
        )
    split = np.empty(len(manifest), dtype=object)
    split[train_idx], split[val_idx], split[test_idx] = "train", "val", "test"
    return pd.Series(split, index=manifest.index, name="split")


def _folds_for(fraction: float) -> int:
    """k such that one of k group folds holds out about `fraction` (0.3 -> 3, 0.5 -> 2)."""
    return max(2, round(1 / fraction))


def _group_split(
    indices: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out one of `folds` seeded StratifiedGroupKFold folds: whole groups, class shares."""
    distinct = len(np.unique(groups))
    if distinct < folds:
        raise SplitError(
            f"split: only {distinct} group(s) left to divide into {folds} folds; add groups or "
            "change data.val_fraction/data.test_fraction"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            keep, held = next(splitter.split(indices, labels, groups))
    except ValueError as error:
        raise SplitError(f"split: cannot divide the groups into {folds} folds ({error})") from None
    return indices[keep], indices[held]


def pack(paths: list[str], data: DataConfig, files_dir: Path = RAW_FILES) -> np.ndarray:
    """Decode, convert and resize `paths` into one (N, C, H, W) uint8 array."""

    def load(path: str) -> np.ndarray:
        return resize(load_converted(files_dir / path, data.channels), data.image_size)

    with ThreadPoolExecutor(max_workers=2) as pool:
        images = list(tqdm(pool.map(load, paths), total=len(paths), desc="pack", unit="img"))
    size, channels = data.image_size, data.channels
    if not images:
        return np.zeros((0, channels, size, size), dtype=np.uint8)
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))


def assign_folds(
    labels: np.ndarray, groups: np.ndarray | None, folds: int, seed: int
) -> np.ndarray:
    """A fold id (0..folds-1) per image, stratified by label (and grouped when groups are given)."""
    fold_of = np.zeros(len(labels), dtype=np.int64)
    if groups is not None:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts = splitter.split(labels, labels, groups)
    else:
        parts = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(
            labels, labels
        )
    for fold, (_train, held_out) in enumerate(parts):
        fold_of[held_out] = fold
    return fold_of


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """64-bit perceptual hash (DCT, imagehash.phash) of each (C, H, W) uint8 image."""
    import imagehash
    from PIL import Image

    hashes = np.zeros(len(images), dtype=np.uint64)
    for index, image in enumerate(images):
        gray = image.mean(axis=0).astype(np.uint8)
        bits = imagehash.phash(Image.fromarray(gray, mode="L")).hash.flatten()
        hashes[index] = np.packbits(bits).view(">u8")[0]
    return hashes


def near_duplicates_across(
    hashes: np.ndarray,
    splits: np.ndarray,
    max_distance: int,
    examples: int = 20,
    block: int = 256,
) -> tuple[int, list[tuple[int, int, int]]]:
    """Count pairs (i < j) in different splits whose hashes differ by <= max_distance bits.

    Returns the count and the first `examples` pairs as (i, j, distance). Memory stays bounded:
    distance 0 groups equal hashes (linear); otherwise `block` rows at a time are compared with
    the rows after them, XOR plus popcount on uint64 (about block x N x 9 bytes at once).
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    split_codes = np.unique(np.asarray(splits), return_inverse=True)[1]
    count, found = 0, []
    if max_distance == 0:
        order = np.argsort(hashes, kind="stable")
        sorted_hashes = hashes[order]
        boundaries = np.flatnonzero(np.diff(sorted_hashes)) + 1
        for members in np.split(order, boundaries):
            if len(members) < 2 or len(np.unique(split_codes[members])) < 2:
                continue
            members = np.sort(members)
            codes = split_codes[members]
            # pairs in different splits = all pairs - pairs within each split
            sizes = np.bincount(codes)
            count += len(members) * (len(members) - 1) // 2 - int((sizes * (sizes - 1) // 2).sum())
            for a in range(len(members)):
                for b in range(a + 1, len(members)):
                    if len(found) >= examples:
                        break
                    if codes[a] != codes[b]:
                        found.append((int(members[a]), int(members[b]), 0))
        return count, found
    for start in range(0, len(hashes), block):
        rows = hashes[start : start + block]
        distance = np.bitwise_count(np.bitwise_xor(rows[:, None], hashes[None, start:]))
        close = distance <= max_distance
        close &= split_codes[start : start + block, None] != split_codes[None, start:]
        close &= np.triu(np.ones(close.shape, dtype=bool), k=1)  # each pair once, i < j
        row_index, col_index = np.nonzero(close)
        count += len(row_index)
        for row, col in zip(row_index, col_index, strict=True):
            if len(found) >= examples:
                break
            found.append((int(row + start), int(col + start), int(distance[row, col])))
    return count, found


def split_and_pack(manifest: pd.DataFrame, params: Params) -> dict[str, Any]:
    data, seed = params.data, params.seed
    manifest = manifest.sort_values("path").reset_index(drop=True)
    manifest["group"] = (
        manifest.get("group", pd.Series([""] * len(manifest))).fillna("").astype(str)
    )
    manifest["split"] = assign_splits(manifest, data, seed)
    SPLIT_FILE.parent.mkdir(parents=True, exist_ok=True)
    manifest[["path", "label", "group", "split"]].to_csv(
        SPLIT_FILE, index=False, lineterminator="\n"
    )

    classes = sorted(manifest["label"].unique(), key=_natural_key)
    class_index = {label: index for index, label in enumerate(classes)}
    PACKED_DIR.mkdir(parents=True, exist_ok=True)
    arrays, targets_of, rows_of = {}, {}, {}
    for name in SPLITS:
        rows = manifest[manifest["split"] == name]
        images = pack(list(rows["path"]), data)
        targets = rows["label"].map(class_index).to_numpy(dtype=np.int64)
        np.save(PACKED_DIR / f"{name}_x.npy", images)
        np.save(PACKED_DIR / f"{name}_y.npy", targets)
        arrays[name], targets_of[name], rows_of[name] = images, targets, rows

    folds_file = PACKED_DIR / "folds.npy"
    folds_file.unlink(missing_ok=True)
    if params.train.cv_folds > 1:  # folds over train+val (in that order); test stays held out
        pool_labels = np.concatenate([targets_of["train"], targets_of["val"]])
        pool_groups = (
            np.concatenate([rows_of["train"]["group"], rows_of["val"]["group"]])
            if data.group_column
            else None
        )
        np.save(folds_file, assign_folds(pool_labels, pool_groups, params.train.cv_folds, seed))

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
        SPLIT_REPORT,
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
        },
    )

    train = arrays["train"].astype(np.float64) / 255.0
    meta = {
        "classes": classes,
        "image_size": data.image_size,
        "channels": data.channels,
        "mean": [float(v) for v in train.mean(axis=(0, 2, 3))],
        "std": [float(max(v, 1e-6)) for v in train.std(axis=(0, 2, 3))],
        "counts": {name: len(arrays[name]) for name in SPLITS},
        "near_duplicate_pairs_across_splits": leaks,
    }
    write_json(PACKED_DIR / "meta.json", meta)
    return meta


def _natural_key(label: str) -> tuple[int, Any]:
    """Sort '2' before '10' when labels are numbers, otherwise alphabetically."""
    return (0, int(label)) if label.isdigit() else (1, label)


def main() -> None:
    params = load_params_or_exit()
    require(VALIDATED_MANIFEST)
    manifest = pd.read_csv(
        VALIDATED_MANIFEST, dtype={"path": str, "label": str, "group": str}, keep_default_na=False
    )
    try:
        meta = split_and_pack(manifest, params)
    except SplitError as error:
        raise SystemExit(f"error: {error}") from None
    counts = meta["counts"]
    print(
        f"split: train {counts['train']}, val {counts['val']}, test {counts['test']} images "
        f"({len(meta['classes'])} classes, {meta['image_size']}px) -> {PACKED_DIR}"
    )
    leaks = meta["near_duplicate_pairs_across_splits"]
    if leaks:
        print(
            f"warning: {leaks} near-duplicate pair(s) across splits (perceptual hash distance "
            f"<= {params.data.near_duplicate_distance}); see {SPLIT_REPORT}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    stage_main(main)
