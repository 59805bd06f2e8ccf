"""The packed arrays: every split's images as one uint8 (N, C, H, W) array, and their metadata.

The split stage writes `data/packed/<split>_{x,y}.npy` and `meta.json` (a :class:`PackedMeta`);
augment adds `data/augmented/train_{x,y}.npy`. Kept apart from the stages so that a stage
imports (and `dvc.yaml` lists as a dependency) only the code it runs: changing how images are
validated does not re-run training unless the validated data itself changes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field
from tqdm import tqdm

from tasks.core.contracts import VersionedFile
from tasks.core.errors import require
from tasks.core.layout import SPLITS, Layout
from tasks.data.images import load_converted, resize

Split = tuple[np.ndarray, np.ndarray]  # images (N, C, H, W) uint8, integer labels (N,)
# a constant channel has std 0: its std is floored so normalization never divides by zero
MIN_STD = 1e-6


class PackedMeta(VersionedFile):
    """`data/packed/meta.json`: what the packed arrays hold and how to normalize them."""

    PRODUCER: ClassVar[str] = "the split stage"

    classes: list[str] = Field(min_length=2)
    image_size: int = Field(ge=1)
    channels: int = Field(ge=1)
    mean: list[float]  # per channel, of the train split's pixels scaled to [0, 1]
    std: list[float]
    counts: dict[str, int]
    near_duplicate_pairs_across_splits: int


@dataclass(frozen=True)
class Arrays:
    """The splits a fit uses: train (with its augmented copies, if any) and val; test and the
    cross-validation folds when they were loaded."""

    train: Split
    val: Split
    test: Split | None = None
    folds: np.ndarray | None = None  # a fold per train original, then per val image

    def splits(self) -> dict[str, Split]:
        """The loaded splits by name (what a data module serves)."""
        named = {"train": self.train, "val": self.val, "test": self.test}
        return {name: split for name, split in named.items() if split is not None}

    def with_splits(self, **splits: Split | None) -> Arrays:
        return replace(self, **splits)


def load_split(name: str, folder: Path) -> Split:
    """The packed images (N, C, H, W uint8) and integer labels of one split in `folder`."""
    images, labels = folder / f"{name}_x.npy", folder / f"{name}_y.npy"
    require(images, labels)
    return np.load(images), np.load(labels)


def load_arrays(layout: Layout, with_test: bool = True, with_folds: bool = False) -> Arrays:
    """The train split (with its offline-augmented copies when there are any), val and test."""
    splits = {name: load_split(name, layout.packed_dir) for name in SPLITS}
    if (layout.augmented_dir / "train_x.npy").exists():
        splits["train"] = load_split("train", layout.augmented_dir)
    folds = None
    if with_folds:
        require(layout.folds_file)
        folds = np.load(layout.folds_file)
    return Arrays(
        splits["train"], splits["val"], splits["test"] if with_test else None, folds=folds
    )


def pack(paths: list[str], files_dir: Path, channels: int, image_size: int) -> np.ndarray:
    """Decode, convert and resize `paths` (relative to `files_dir`) into one (N, C, H, W) array."""

    def load(path: str) -> np.ndarray:
        return resize(load_converted(files_dir / path, channels), image_size)

    with ThreadPoolExecutor(max_workers=2) as pool:
        images = list(tqdm(pool.map(load, paths), total=len(paths), desc="pack", unit="img"))
    if not images:
        return np.zeros((0, channels, image_size, image_size), dtype=np.uint8)
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))


def natural_key(label: str) -> tuple[int, Any]:
    """Sort '2' before '10' when labels are numbers, otherwise alphabetically."""
    return (0, int(label)) if label.isdigit() else (1, label)
