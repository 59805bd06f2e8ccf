"""split: a stratified, seeded train/val/test split, packed into one uint8 array file per split.

Run on its own with ``python -m tasks.split`` (after validate).

Every accepted image is decoded once here, converted to `data.channels`, resized to
`data.image_size` and stored in `data/packed/<split>_x.npy` (N, C, H, W, uint8) with labels in
`<split>_y.npy`, so training never decodes images one by one and DVC tracks a handful of files.
Normalization statistics come from the train split only.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from tasks.config import DataConfig, load_params_or_exit
from tasks.images import load_converted, resize
from tasks.ingest import RAW_FILES
from tasks.io import write_json
from tasks.validate import VALIDATED_MANIFEST

SPLIT_FILE = Path("data/splits/split.csv")
PACKED_DIR = Path("data/packed")
SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """The accepted data cannot be split as configured."""


def assign_splits(manifest: pd.DataFrame, data: DataConfig, seed: int) -> pd.Series:
    """Stratified split; returns the split name for every row of `manifest`."""
    counts = manifest["label"].value_counts()
    too_few = counts[counts < 3]
    if not too_few.empty:
        raise SplitError(
            f"split: class(es) {sorted(too_few.index)} have fewer than 3 accepted images "
            "(one per split is needed); add images or remove the class"
        )
    indices = np.arange(len(manifest))
    labels = manifest["label"].to_numpy()
    held_out = data.val_fraction + data.test_fraction
    train_idx, rest_idx = train_test_split(
        indices, test_size=held_out, stratify=labels, random_state=seed
    )
    val_idx, test_idx = train_test_split(
        rest_idx,
        test_size=data.test_fraction / held_out,
        stratify=labels[rest_idx],
        random_state=seed,
    )
    split = np.empty(len(manifest), dtype=object)
    split[train_idx], split[val_idx], split[test_idx] = "train", "val", "test"
    return pd.Series(split, index=manifest.index, name="split")


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


def split_and_pack(manifest: pd.DataFrame, data: DataConfig, seed: int) -> dict[str, Any]:
    manifest = manifest.sort_values("path").reset_index(drop=True)
    manifest["split"] = assign_splits(manifest, data, seed)
    SPLIT_FILE.parent.mkdir(parents=True, exist_ok=True)
    manifest[["path", "label", "split"]].to_csv(SPLIT_FILE, index=False, lineterminator="\n")

    classes = sorted(manifest["label"].unique(), key=_natural_key)
    class_index = {label: index for index, label in enumerate(classes)}
    PACKED_DIR.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name in SPLITS:
        rows = manifest[manifest["split"] == name]
        images = pack(list(rows["path"]), data)
        targets = rows["label"].map(class_index).to_numpy(dtype=np.int64)
        np.save(PACKED_DIR / f"{name}_x.npy", images)
        np.save(PACKED_DIR / f"{name}_y.npy", targets)
        arrays[name] = images

    train = arrays["train"].astype(np.float64) / 255.0
    meta = {
        "classes": classes,
        "image_size": data.image_size,
        "channels": data.channels,
        "mean": [float(v) for v in train.mean(axis=(0, 2, 3))],
        "std": [float(max(v, 1e-6)) for v in train.std(axis=(0, 2, 3))],
        "counts": {name: len(arrays[name]) for name in SPLITS},
    }
    write_json(PACKED_DIR / "meta.json", meta)
    return meta


def _natural_key(label: str) -> tuple[int, Any]:
    """Sort '2' before '10' when labels are numbers, otherwise alphabetically."""
    return (0, int(label)) if label.isdigit() else (1, label)


def load_split(name: str, packed_dir: Path = PACKED_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The packed images (N, C, H, W uint8) and integer labels of one split."""
    return np.load(packed_dir / f"{name}_x.npy"), np.load(packed_dir / f"{name}_y.npy")


def main() -> None:
    params = load_params_or_exit()
    manifest = pd.read_csv(VALIDATED_MANIFEST, dtype={"path": str, "label": str})
    try:
        meta = split_and_pack(manifest, params.data, params.seed)
    except SplitError as error:
        raise SystemExit(f"error: {error}") from None
    counts = meta["counts"]
    print(
        f"split: train {counts['train']}, val {counts['val']}, test {counts['test']} images "
        f"({len(meta['classes'])} classes, {meta['image_size']}px) -> {PACKED_DIR}"
    )


if __name__ == "__main__":
    main()
