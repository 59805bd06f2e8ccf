"""End to end: the data stages give the same bytes for the same seed, across processes.

ingest -> validate -> split -> augment run as their real `main()` entry points in fresh Python
processes with different hash seeds (tests/stages.py), so determinism is checked across
processes, not only within one interpreter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.core.layout import Layout
from tests.stages import digits_overrides, output_files, read_split, run_stages


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(
    first_run: Path, digits_source: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again-seed42"
    run_stages(again, digits_overrides(digits_source), hash_seed=2)
    other = tmp_path / "seed7"
    run_stages(other, digits_overrides(digits_source, seed=7), hash_seed=1)

    first, second, third = output_files(first_run), output_files(again), output_files(other)
    expected = {
        "data/packed/train_x.npy",
        "data/packed/val_x.npy",
        "data/packed/test_x.npy",
        "data/packed/train_y.npy",
        "data/packed/folds.npy",
        "data/splits/split.csv",
        "data/augmented/train_x.npy",
        "data/augmented/train_y.npy",
    }
    assert expected <= set(first)
    assert set(first) == set(second) == set(third)
    different = [name for name in first if first[name] != second[name]]
    assert not different, f"same seed, different bytes: {different}"

    assert third["data/splits/split.csv"] != first["data/splits/split.csv"]
    assert third["data/augmented/train_x.npy"] != first["data/augmented/train_x.npy"]
    # not only a different split: the same original image gets different random copies
    copies = {}
    for seed, work in ((42, first_run), (7, other)):
        train_paths = read_split(work).query("split == 'train'")["path"].tolist()
        augmented = np.load(Layout(work).augmented_dir / "train_x.npy")
        n = len(train_paths)  # packed train order is the split file's (sorted path) order
        assert len(augmented) == 3 * n  # originals, then augment.copies=2 copies of each
        copies[seed] = {p: (augmented[i], augmented[n + i]) for i, p in enumerate(train_paths)}
    shared = sorted(set(copies[42]) & set(copies[7]))
    assert len(shared) > 100
    assert all(np.array_equal(copies[42][p][0], copies[7][p][0]) for p in shared)
    changed = sum(not np.array_equal(copies[42][p][1], copies[7][p][1]) for p in shared)
    assert changed > 0.9 * len(shared)
