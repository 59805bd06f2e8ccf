"""The reference: what the champion's held-out test images looked like, for the drift tests.

Every part of the reference comes from the champion's test images, never from training images
(an overfit network embeds and scores its own training images differently from unseen ones,
which pushed the embedding test toward false drift) and never from validation images (kept out,
so that they remain an independent control of clean traffic: the tests, the drift demo and
`benchmarks/monitor_false_alarms` serve them as clean traffic).

- Embeddings, predicted labels and confidences: the champion's served ONNX file (int8 when the
  compress stage chose it: the file the service runs and whose outputs it logs, so like is
  compared with like) on the test set it was registered with (models/registry/<id>/test.npz).
  A champion exported before the embedding output has none: its reference has no embeddings
  and the MMD test is skipped, as the log it serves carries none either.
- Image statistics (the decoded upload's pixel mean and std, its width and height, which the
  service logs before resizing, `tasks.serving.uploads.decode_image`): test.npz holds the
  resized model input, not the files, so these come from the validate stage, which computed
  exactly these numbers with the same function for every file it accepted. Which files: the
  test rows of data/splits/split.csv (their statistics in data/validated/manifest.csv), and,
  for a champion from continual learning, the test part of each batch in its lineage
  (data/batches/<version>/split.csv test rows not dropped as leaked, statistics in its
  validated.csv), exactly the images its test.npz concatenates. Checked: the packed test split
  must be the first rows of test.npz and the counts must add up; when they do not (the data was
  re-split since the champion was registered, or a batch folder is gone) the image statistics
  are left out of the reference, the image tests do not run and `Reference.note` says why.

onnxruntime, numpy and pandas only (no torch); `tasks.monitoring.drift` gets plain arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.compression.runtime import OnnxClassifier
from tasks.core.errors import shown
from tasks.core.layout import Layout
from tasks.monitoring.drift import IMAGE_FEATURES, Sample
from tasks.registry.store import EntryFiles, Registry, champion, load_registry, load_test_set
from tasks.serving.logbook import CONFIDENCE_DECIMALS

TEST_SPLIT = "test"


@dataclass(frozen=True)
class Reference:
    """The reference sample and what it was made from."""

    sample: Sample
    classes: list[str]
    champion: str  # the champion's registry id: the model_version its served records carry
    test_images: int  # the champion's registered test images (labels, confidences, embeddings)
    statistics_images: int  # of them, those behind the image statistics (0: none, see `note`)
    note: str = ""  # why the image statistics are missing, when they are


def statistics_of(rows: pd.DataFrame, manifest: Path) -> pd.DataFrame | None:
    """The image statistics of `rows` (a `path` column) from a validate manifest; None when the
    manifest lacks one of them."""
    statistics = pd.read_csv(
        manifest, usecols=["path", *IMAGE_FEATURES], dtype={"path": str}, keep_default_na=False
    )
    merged = rows[["path"]].merge(statistics, on="path", how="left", validate="one_to_one")
    return None if merged[list(IMAGE_FEATURES)].isna().any().any() else merged


def split_test_rows(layout: Layout) -> pd.DataFrame | None:
    """The test split's rows (data/splits/split.csv, in the packed order) with their statistics."""
    if not (layout.split_file.exists() and layout.validated_manifest.exists()):
        return None
    splits = pd.read_csv(layout.split_file, dtype=str, keep_default_na=False)
    rows = splits.loc[splits["split"] == TEST_SPLIT].reset_index(drop=True)
    return statistics_of(rows, layout.validated_manifest)


def batch_test_rows(layout: Layout, version: str) -> pd.DataFrame | None:
    """A continual batch's own test part (leaked images dropped) with its statistics."""
    folder = layout.root / "data" / "batches" / version
    if not ((folder / "split.csv").exists() and (folder / "validated.csv").exists()):
        return None
    split = pd.read_csv(folder / "split.csv", dtype=str, keep_default_na=False)
    leaked = split.get("leaked", "")
    rows = split.loc[(split["split"] == TEST_SPLIT) & (leaked == "")].reset_index(drop=True)
    return statistics_of(rows, folder / "validated.csv")


def lineage_batches(registry: Registry, champion_id: str) -> list[str]:
    """The batches whose test parts the champion's test set holds, oldest first: one per
    continual round from the pipeline model it descends from."""
    batches: list[str] = []
    entry = registry.entry(champion_id)
    while entry is not None and entry.lineage is not None:
        batches.insert(0, entry.lineage.batch)
        entry = registry.entry(entry.parent) if entry.parent else None
    return batches


def test_statistics(
    layout: Layout, files: EntryFiles, test_images: np.ndarray
) -> tuple[pd.DataFrame | None, str]:
    """The image statistics of the champion's registered test images, or None and why not."""
    rows = split_test_rows(layout)
    packed = layout.packed_dir / "test_x.npy"
    if rows is None or not packed.exists():
        return None, (
            f"no test split statistics ({shown(layout.split_file)}, "
            f"{shown(layout.validated_manifest)}, {shown(packed)}): image tests not run"
        )
    split_images = np.load(packed, mmap_mode="r")
    if len(split_images) != len(rows) or not np.array_equal(
        split_images, test_images[: len(split_images)]
    ):
        return None, (
            "the champion's registered test images are not the current test split (the data "
            "was re-split since it was registered): image tests not run"
        )
    parts = [rows]
    for version in lineage_batches(load_registry(layout.registry_dir), files.entry.id):
        batch = batch_test_rows(layout, version)
        if batch is None:
            return None, f"data/batches/{version} is missing or incomplete: image tests not run"
        parts.append(batch)
    every = pd.concat(parts, ignore_index=True)
    if len(every) != len(test_images):
        return None, (
            f"the test split and the lineage's batch test parts hold {len(every)} images, the "
            f"champion's test set {len(test_images)}: image tests not run"
        )
    return every, ""


def build_reference(layout: Layout) -> Reference:
    """The champion's reference (see the module docstring).

    Raises:
        NoChampion: the registry has none yet.
        RegistryError: one of the champion's files is missing or changed.
    """
    files = champion(layout.registry_dir)
    served = OnnxClassifier(files.served_onnx)
    test_images, _ = load_test_set(files.test_set)
    probabilities, embeddings = served.outputs(test_images)
    statistics, note = test_statistics(layout, files, test_images)
    classes = list(served.classes)
    features = (
        {}
        if statistics is None
        else {name: statistics[name].to_numpy(np.float64) for name in IMAGE_FEATURES}
    )
    sample = Sample(
        features=features,
        labels=np.array(classes, dtype=str)[probabilities.argmax(axis=1)],
        # rounded as the log rounds the served ones: ties stay ties in the rank test
        confidences=np.round(probabilities.max(axis=1).astype(np.float64), CONFIDENCE_DECIMALS),
        embeddings=None if embeddings is None else embeddings.astype(np.float64),
    )
    counted = 0 if statistics is None else len(statistics)
    return Reference(sample, classes, files.entry.id, len(test_images), counted, note)
