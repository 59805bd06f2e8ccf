"""A new labelled batch as a data version: `data/batches/<version>/`, versioned by `dvc add`.

The batch is ingested and validated by the same code as the training data
(`tasks.data.ingestion`, `tasks.data.validation`): every file ends up accepted or quarantined
with a reason, and a label the champion does not know is quarantined as ``unknown_label`` (the
challenger keeps the champion's classes). Accepted images are converted to the champion's
channels and size exactly as the split stage packs the training data.

The version is the fingerprint of what the batch holds (every file's path, label and sha256)
and of the settings that shape what is written from it, so the same batch read twice is the same
version. Its own test part (`continual.test_fraction` of each class, stratified and seeded) is
never trained on. Leakage check, by perceptual hash within `data.near_duplicate_distance` bits
(`tasks.data.leakage`): a new test image close to an old train or validation image, or to a new
train image, is dropped from the test part; a new train image close to an old test image is
dropped from the train part. Each is counted and listed in `batch.json`, never dropped silently.

Folder of a version: `raw/` (what ingest copied, its manifest and ignored.csv), `validated.csv`,
`quarantine/` (manifest.csv + files), `split.csv` (path, label, split, leaked), `packed/`
(`train_{x,y}.npy`, `test_{x,y}.npy`, uint8 (N, C, H, W) and class indices of the champion) and
`batch.json`, written last: a folder without it is an interrupted or refused batch, redone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from tasks.core.config import Params
from tasks.core.errors import UserError, shown
from tasks.core.fingerprint import fingerprint
from tasks.core.io import read_json, write_json
from tasks.core.layout import Layout
from tasks.data.ingestion import ingest
from tasks.data.leakage import perceptual_hashes
from tasks.data.packed import Split, load_split, pack
from tasks.data.sources import IGNORED_FILE, count_ignored
from tasks.data.validation import REASONS, validate, write_quarantine
from tasks.modeling.artifact import ModelCard

BATCH_FILE = "batch.json"
ACCEPTED_COLUMNS = ["path", "label", "sha256", "bytes", "width", "height", "mode", "mean", "std"]
LEAKAGE_EXAMPLES = 20  # listed in batch.json; split.csv marks every dropped image


class BatchError(UserError, ValueError):
    """The batch cannot be used as it is (nothing accepted, a class too small, not a DVC repo)."""


def batches_dir(layout: Layout) -> Path:
    return layout.root / "data" / "batches"


@dataclass(frozen=True)
class OldSplits:
    """What the champion learnt from and was judged on, for the leakage check and the replay."""

    train: Split  # data/packed train split: replayed, and a new test image must not match it
    val: Split
    test: Split  # the champion's registered test set: a new train image must not match it


@dataclass(frozen=True)
class Batch:
    """One data version, read back from its folder."""

    version: str
    folder: Path
    train: Split
    test: Split
    summary: dict[str, Any]  # batch.json


def version_of(manifest: pd.DataFrame, params: Params, card: ModelCard) -> str:
    """The content fingerprint: every entry (path, label, status, sha256) and what shapes the
    version's arrays and split (classes, channels, size, validation limits, fraction, seed)."""
    entries = manifest[["path", "label", "status", "sha256"]].astype(str).to_numpy().tolist()
    settings = {
        "classes": card.classes,
        "channels": card.channels,
        "image_size": card.image_size,
        "min_size": params.data.min_size,
        "max_pixels": params.data.max_pixels,
        "test_fraction": params.continual.test_fraction,
        "near_duplicate_distance": params.data.near_duplicate_distance,
        "seed": params.seed,
    }
    return fingerprint({"continual batch": entries, "settings": settings})


def check_class_sizes(labels: pd.Series, min_images: int) -> None:
    """Every class of the batch needs `min_images` accepted images (a train and a test part)."""
    counts = labels.value_counts().sort_index()
    short = counts[counts < min_images]
    if counts.empty or not short.empty:
        listed = ", ".join(f"{label!r} ({n})" for label, n in short.items()) or "every class (0)"
        raise BatchError(
            f"batch: class(es) {listed} have fewer than continual.min_batch_images={min_images} "
            "accepted images, too few for a train and a test part; add images to them or lower "
            "continual.min_batch_images"
        )


def held_out_part(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Which images are the batch's test part: stratified by label, seeded."""
    indices = np.arange(len(labels))
    try:
        _, test = train_test_split(
            indices, test_size=test_fraction, stratify=labels, random_state=seed
        )
    except ValueError as error:  # a class too small for the fraction, in sixfold's words
        raise BatchError(
            f"batch: cannot hold out continual.test_fraction={test_fraction} of every class "
            f"({error}); add images or raise continual.min_batch_images"
        ) from None
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return is_test


def near_any(query: np.ndarray, reference: np.ndarray, max_distance: int) -> np.ndarray:
    """Which `query` hashes are within `max_distance` bits of any `reference` hash (blocks of
    256 queries: memory stays about 256 x len(reference) x 9 bytes)."""
    found = np.zeros(len(query), dtype=bool)
    if len(query) == 0 or len(reference) == 0:
        return found
    query, reference = np.asarray(query, np.uint64), np.asarray(reference, np.uint64)
    for start in range(0, len(query), 256):
        rows = query[start : start + 256]
        distance = np.bitwise_count(np.bitwise_xor(rows[:, None], reference[None, :]))
        found[start : start + 256] = (distance <= max_distance).any(axis=1)
    return found


def leakage(
    train_images: np.ndarray, test_images: np.ndarray, old: OldSplits, max_distance: int
) -> tuple[np.ndarray, np.ndarray]:
    """Why each new train and test image leaks ('' when it does not), by perceptual hash."""
    new_train, new_test = perceptual_hashes(train_images), perceptual_hashes(test_images)
    old_seen = perceptual_hashes(np.concatenate([old.train[0], old.val[0]]))
    train_reason = np.where(
        near_any(new_train, perceptual_hashes(old.test[0]), max_distance), "old_test", ""
    )
    test_reason = np.where(near_any(new_test, old_seen, max_distance), "old_train_or_val", "")
    kept_train = new_train[train_reason == ""]
    close_to_batch = near_any(new_test, kept_train, max_distance) & (test_reason == "")
    test_reason[close_to_batch] = "batch_train"
    return train_reason.astype(object), test_reason.astype(object)


def dvc_add(root: Path, folder: Path) -> Path:
    """`dvc add` the version folder; the .dvc file the user commits."""
    executable = Path(sys.executable).with_name("dvc")
    # --wait-for-lock: two continual runs at once take turns at DVC's repository lock
    dvc = str(executable) if executable.exists() else "dvc"
    command = [dvc, "--wait-for-lock", "add", "--quiet", str(folder)]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise BatchError(f"batch: dvc add {shown(folder)} failed: {lines[-1]}")
    return folder.with_name(folder.name + ".dvc")


def require_dvc_repository(root: Path) -> None:
    if not (root / ".dvc").is_dir():
        raise BatchError(
            f"batch: {shown(root)} is not a DVC repository, so a batch cannot become a data "
            "version; run continual learning inside a sixfold repository (`dvc init` there)"
        )


def read_batch(folder: Path) -> Batch:
    packed = folder / "packed"
    return Batch(
        folder.name,
        folder,
        load_split("train", packed),
        load_split("test", packed),
        read_json(folder / BATCH_FILE),
    )


def existing_batch(layout: Layout, version: str) -> Batch | None:
    """The version's folder when it was completed before (its batch.json written), else None."""
    folder = batches_dir(layout) / version
    return read_batch(folder) if (folder / BATCH_FILE).exists() else None


def ingest_batch(source: str, params: Params, layout: Layout) -> tuple[Path, pd.DataFrame]:
    """Copy the batch into a staging folder under data/batches; the folder and its manifest.

    The folder's name is unique (``.staging-<random>``): two runs at once never share one."""
    batches_dir(layout).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=batches_dir(layout)))
    try:
        manifest = ingest(source, dict(params.data.storage_options), staging / "raw")
    except BaseException:  # a source that cannot be read leaves nothing behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging, manifest.fillna("")


def build_batch(
    source: str,
    staging: Path,
    manifest: pd.DataFrame,
    version: str,
    params: Params,
    card: ModelCard,
    old: OldSplits,
    layout: Layout,
) -> Batch:
    """Validate, split, pack and check the staged batch; move it to data/batches/<version>."""
    folder = batches_dir(layout) / version
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    raw_files = folder / "raw" / "files"
    data = params.data.model_copy(update={"channels": card.channels, "classes": card.classes})
    table = validate(manifest, data, raw_files)
    accepted = table[table["reason"] == ""].sort_values("path").reset_index(drop=True)
    quarantined = table[table["reason"] != ""]
    write_quarantine(quarantined, raw_files, folder / "quarantine")
    accepted[ACCEPTED_COLUMNS].to_csv(folder / "validated.csv", index=False, lineterminator="\n")
    reasons = {reason: int((quarantined["reason"] == reason).sum()) for reason in REASONS}
    if accepted.empty:
        found = ", ".join(f"{k}={v}" for k, v in reasons.items() if v) or "no files"
        raise BatchError(
            f"batch: no image of {source} was accepted ({len(table)} quarantined: {found}); "
            f"see {shown(folder / 'quarantine' / 'manifest.csv')}"
        )
    check_class_sizes(accepted["label"], params.continual.min_batch_images)

    seed = params.seed
    is_test = held_out_part(accepted["label"].to_numpy(), params.continual.test_fraction, seed)
    class_index = {label: index for index, label in enumerate(card.classes)}
    images = pack(list(accepted["path"]), raw_files, card.channels, card.image_size)
    labels = accepted["label"].map(class_index).to_numpy(dtype=np.int64)
    train_reason, test_reason = leakage(
        images[~is_test], images[is_test], old, params.data.near_duplicate_distance
    )
    leaked = np.empty(len(accepted), dtype=object)
    leaked[~is_test], leaked[is_test] = train_reason, test_reason
    split = pd.DataFrame(
        {
            "path": accepted["path"],
            "label": accepted["label"],
            "split": np.where(is_test, "test", "train"),
            "leaked": leaked,
        }
    )
    split.to_csv(folder / "split.csv", index=False, lineterminator="\n")
    packed = folder / "packed"
    packed.mkdir()
    kept = leaked == ""
    for name, part in (("train", ~is_test & kept), ("test", is_test & kept)):
        np.save(packed / f"{name}_x.npy", images[part])
        np.save(packed / f"{name}_y.npy", labels[part])

    ignored = pd.read_csv(folder / "raw" / IGNORED_FILE, dtype=str, keep_default_na=False)
    dropped = split[split["leaked"] != ""]
    summary = {
        "version": version,
        "source": source,
        "classes": card.classes,
        "image_size": card.image_size,
        "channels": card.channels,
        "total": len(table),
        "accepted": len(accepted),
        "quarantined": len(quarantined),
        "reasons": reasons,
        "ignored": count_ignored(ignored["reason"]),
        "per_class": {str(k): int(v) for k, v in accepted["label"].value_counts().items()},
        "train": int((~is_test & kept).sum()),
        "test": int((is_test & kept).sum()),
        "leakage": {
            "near_duplicate_distance": params.data.near_duplicate_distance,
            "dropped_from_train": int((train_reason != "").sum()),
            "dropped_from_test": int((test_reason != "").sum()),
            "examples": dropped.head(LEAKAGE_EXAMPLES).to_dict(orient="records"),
        },
    }
    assert summary["accepted"] + summary["quarantined"] == summary["total"], "a file was lost"
    if summary["train"] == 0 or summary["test"] == 0:
        raise BatchError(
            f"batch: after the leakage check the batch has {summary['train']} train and "
            f"{summary['test']} test images left; see {shown(folder / 'split.csv')} (column "
            "leaked)"
        )
    write_json(folder / BATCH_FILE, summary)
    return read_batch(folder)
