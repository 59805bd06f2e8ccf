"""One layout: stage functions read and write inside their repository, whatever the working
directory (a Prefect worker, a notebook, a test elsewhere)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tasks.core.config import load_params, with_overrides
from tasks.core.layout import Layout
from tasks.core.overrides import read_best_params
from tests.conftest import REPO_ROOT


def _small_repository(root: Path) -> Layout:
    """params.yaml and packed arrays of two classes (what the split stage would leave)."""
    root.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    layout = Layout(root)
    layout.packed_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in (("train", 12), ("val", 4), ("test", 4)):
        images = rng.integers(0, 256, (count, 1, 16, 16), dtype=np.uint8)
        np.save(layout.packed_dir / f"{name}_x.npy", images)
        np.save(layout.packed_dir / f"{name}_y.npy", np.arange(count) % 2)
    return layout


def test_discover_finds_the_repository_from_a_subfolder(tmp_path: Path) -> None:
    layout = _small_repository(tmp_path / "repo")
    (tmp_path / "repo" / "notebooks" / "deep").mkdir(parents=True)
    assert Layout.discover(tmp_path / "repo" / "notebooks" / "deep") == layout
    assert Layout.discover(tmp_path / "repo").packed_dir == tmp_path / "repo" / "data" / "packed"
    assert Layout.discover(tmp_path / "elsewhere").root == (tmp_path / "elsewhere").resolve()


def test_stages_called_from_another_folder_write_into_their_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.augment import augment_stage
    from tasks.tune import tune_search

    layout = _small_repository(tmp_path / "repo")
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    params = with_overrides(load_params(layout.params_file), {"tune.enabled": False})

    written, flips = augment_stage(params, layout)
    # random pixels: the mirror check's classifier is at chance, so augment.hflip: auto is off
    assert params.augment.hflip == "auto" and "too close to chance" in flips
    assert written == 12 * (params.augment.copies + 1)
    assert np.load(layout.augmented_dir / "train_x.npy").shape == (written, 1, 16, 16)
    assert layout.augment_preview.exists()

    summary = tune_search(params, layout)
    assert summary["enabled"] is False
    assert read_best_params(layout.best_params) == {
        "train.lr": params.train.lr,
        "augment.hflip": "auto",  # a disabled search passes it on; train resolves it
        "augment.rotation": params.augment.rotation,
        "augment.scale": list(params.augment.scale),
        "model.width": params.model.width,
    }
    assert (layout.tune_reports / "summary.json").exists()
    assert list(elsewhere.iterdir()) == []  # nothing landed in the working directory
