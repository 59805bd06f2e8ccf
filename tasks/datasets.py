"""Where each data stage leaves its output, and the readers of the packed arrays.

Kept apart from the stages so that a stage imports (and `dvc.yaml` lists as a dependency) only
the code it runs: changing how images are validated does not re-run training unless the
validated data itself changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.cli import UserError

RAW_DIR = Path("data/raw")
RAW_FILES = RAW_DIR / "files"
RAW_MANIFEST = RAW_DIR / "manifest.csv"
VALIDATED_MANIFEST = Path("data/validated/manifest.csv")
PACKED_DIR = Path("data/packed")
AUGMENTED_DIR = Path("data/augmented")
SPLITS = ("train", "val", "test")


class MissingInput(UserError, FileNotFoundError):
    """An upstream stage's output is not there (the stage was run out of order)."""


def require(*paths: str | Path) -> None:
    """Raise MissingInput naming the first of `paths` that does not exist."""
    for path in paths:
        if not Path(path).exists():
            raise MissingInput(
                f"{path} is missing; run the stages before this one first (`dvc repro`)"
            )


def load_split(name: str, packed_dir: Path = PACKED_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The packed images (N, C, H, W uint8) and integer labels of one split."""
    images, labels = Path(packed_dir) / f"{name}_x.npy", Path(packed_dir) / f"{name}_y.npy"
    require(images, labels)
    return np.load(images), np.load(labels)


def load_arrays(packed_dir: Path = PACKED_DIR, augmented_dir: Path = AUGMENTED_DIR) -> dict:
    """The train split (with its offline-augmented copies when there are any), val and test."""
    arrays = {name: load_split(name, packed_dir) for name in SPLITS}
    if (Path(augmented_dir) / "train_x.npy").exists():
        arrays["train"] = load_split("train", augmented_dir)
    return arrays
