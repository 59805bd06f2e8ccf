"""The split and augment stages, and the batched augmentation, on real data with no mocks.

Stages run as their real `main()` entry points in fresh Python processes (tests/stages.py); the
check that the same seed gives the same bytes across processes is in
tests/system/test_split_augment_pipeline.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.core.config import AugmentConfig, DataConfig
from tasks.core.layout import Layout
from tasks.data.augmentation import BatchAugment, augment_uint8
from tasks.data.packed import PackedMeta
from tasks.data.splitting import SplitError, assign_splits
from tests.images import noise, png_bytes, write_grouped_manifest
from tests.stages import PER_CLASS, read_split, run_stages


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- stratified split


def test_split_is_stratified_and_normalization_uses_train_only(first_run: Path) -> None:
    split = read_split(first_run)
    assert len(split) == 10 * PER_CLASS
    assert split["path"].is_unique
    fractions = {"train": 0.70, "val": 0.15, "test": 0.15}
    table = pd.crosstab(split["label"], split["split"])
    for label, counts in table.iterrows():
        total = counts.sum()
        for name, fraction in fractions.items():
            assert abs(counts[name] - total * fraction) <= 2, (label, name, dict(counts))

    layout = Layout(first_run)
    meta = PackedMeta.load(layout.packed_meta)
    # data.channels: auto (the default): the digits are L-mode PNGs, so they stay grayscale
    report = read_json(layout.split_report)
    assert meta.channels == report["channels"] == 1
    assert report["channels_reason"] == (
        f"auto: 0 of {10 * PER_CLASS} accepted images (0.0%) carry colour (< 5%) -> grayscale"
    )
    packed = layout.packed_dir
    arrays = {name: np.load(packed / f"{name}_x.npy") for name in fractions}
    targets = {name: np.load(packed / f"{name}_y.npy") for name in fractions}
    for name in fractions:
        assert arrays[name].shape == ((split["split"] == name).sum(), 1, 16, 16)
        assert arrays[name].dtype == np.uint8
        labels = split.loc[split["split"] == name, "label"].map(meta.classes.index)
        assert np.array_equal(np.sort(targets[name]), np.sort(labels.to_numpy()))

    train = arrays["train"].astype(np.float64) / 255.0
    assert meta.mean == pytest.approx([train.mean()], rel=1e-9)
    assert meta.std == pytest.approx([train.std()], rel=1e-9)
    # and not the statistics of all the data (which would leak val/test into training)
    everything = np.concatenate(list(arrays.values())).astype(np.float64) / 255.0
    assert abs(everything.mean() - train.mean()) > 1e-6
    assert meta.counts == {name: len(arrays[name]) for name in fractions}


def test_cv_folds_cover_train_and_val_stratified(first_run: Path) -> None:
    layout = Layout(first_run)
    packed = layout.packed_dir
    folds = np.load(layout.folds_file)
    pool = np.concatenate([np.load(packed / "train_y.npy"), np.load(packed / "val_y.npy")])
    assert folds.shape == pool.shape
    assert set(folds.tolist()) == {0, 1, 2}
    for label in np.unique(pool):
        per_fold = np.bincount(folds[pool == label], minlength=3)
        assert per_fold.max() - per_fold.min() <= 1, (label, per_fold)
    assert read_json(layout.split_report)["cv_folds"] == 3


# --------------------------------------------------------------------------- groups


def test_a_group_never_spans_two_splits(tmp_path: Path) -> None:
    manifest, rows = write_grouped_manifest(
        tmp_path / "subjects",
        "subject",
        30,
        6,
        lambda _, index: f"c{index % 3}",
        group_name=lambda subject: f"subj{subject:02d}",
    )
    source = str(manifest)

    work = tmp_path / "work"
    overrides = {"data": {"source": source, "group_column": "subject"}}
    run_stages(work, overrides, stages=("ingest", "validate", "split"))
    split = read_split(work)
    assert len(split) == 180
    truth = {row["path"]: row["subject"] for row in rows}
    assert (split["group"] == split["path"].map(truth)).all()
    splits_per_group = split.groupby("group")["split"].nunique()
    assert (splits_per_group == 1).all(), splits_per_group[splits_per_group > 1]
    assert set(split["split"]) == {"train", "val", "test"}
    report = read_json(Layout(work).split_report)
    assert sum(report["groups"].values()) == 30

    # control: the same rows split without the group column do mix subjects across splits
    manifest = pd.DataFrame(rows).rename(columns={"subject": "group"})
    ungrouped = assign_splits(manifest, DataConfig(), seed=42)
    assert (ungrouped.groupby(manifest["group"]).nunique() > 1).any()


def _grouped_manifest(groups: int, per_group: int, classes: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"path": f"g{g}/{i}.png", "label": f"c{(g + i) % classes}", "group": f"g{g}"}
            for g in range(groups)
            for i in range(per_group)
        ]
    )


def test_grouped_split_is_stratified_and_keeps_groups_whole() -> None:
    manifest = _grouped_manifest(groups=40, per_group=6, classes=3)
    data = DataConfig(group_column="group", val_fraction=0.15, test_fraction=0.15)
    split = assign_splits(manifest, data, seed=3)
    assert (split.groupby(manifest["group"]).nunique() == 1).all()
    for name in ("val", "test"):
        shares = manifest.loc[split == name, "label"].value_counts(normalize=True)
        assert set(shares.index) == {"c0", "c1", "c2"}, name
        assert (abs(shares - 1 / 3) < 0.1).all(), (name, shares)
    assert 0.6 <= (split == "train").mean() <= 0.75


def test_too_few_groups_is_a_clear_error() -> None:
    manifest = _grouped_manifest(groups=3, per_group=5, classes=3)
    with pytest.raises(SplitError, match=r"gives 3 group\(s\); .* needs at least 6"):
        assign_splits(manifest, DataConfig(group_column="group"), seed=0)  # 0.3: 3 folds, then 2


def test_a_single_class_is_a_clear_error() -> None:
    manifest = pd.DataFrame({"path": [f"{i}.png" for i in range(9)], "label": ["only"] * 9})
    manifest["group"] = ""
    with pytest.raises(SplitError, match="needs at least 2"):
        assign_splits(manifest, DataConfig(), seed=0)


def test_classes_too_small_for_the_fractions_are_a_clear_error() -> None:
    labels = [f"c{i % 4}" for i in range(60)]
    manifest = pd.DataFrame({"path": [f"{i}.png" for i in range(60)], "label": labels})
    manifest["group"] = ""
    data = DataConfig(val_fraction=0.02, test_fraction=0.02)  # 3 held-out images, 4 classes
    with pytest.raises(SplitError, match=r"\(60 images, 4 classes\); smallest: 'c0' \(15 images\)"):
        assign_splits(manifest, data, seed=0)


# --------------------------------------------------------------------------- near duplicates


def _near_duplicate_source(root: Path, pairs: int) -> list[tuple[str, str]]:
    """3 classes x 20 noise images, plus `pairs` images saved twice (same pixels, other bytes)."""
    for label in range(3):
        for index in range(20):
            path = root / f"c{label}" / f"noise_{index:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes(noise(1000 * label + index)))
    planted = []
    for index in range(pairs):
        label = f"c{index % 3}"
        pixels = noise(50_000 + index)
        a, b = f"{label}/pair_{index:02d}_a.png", f"{label}/pair_{index:02d}_b.png"
        (root / a).write_bytes(png_bytes(pixels, compress_level=9))
        (root / b).write_bytes(png_bytes(pixels, compress_level=0))
        assert (root / a).read_bytes() != (root / b).read_bytes()
        planted.append((a, b))
    return planted


@pytest.mark.parametrize("pairs", [20, 0])
def test_near_duplicates_across_splits_are_counted(tmp_path: Path, pairs: int) -> None:
    planted = _near_duplicate_source(tmp_path / "source", pairs)
    work = tmp_path / "work"
    run_stages(
        work, {"data": {"source": str(tmp_path / "source")}}, ("ingest", "validate", "split")
    )

    layout = Layout(work)
    validation = read_json(layout.validation_report)
    assert validation["quarantined"] == 0  # not byte duplicates: validate keeps both copies
    split = read_split(work)
    where = dict(zip(split["path"], split["split"], strict=True))
    straddling = {(a, b) for a, b in planted if where[a] != where[b]}
    report = read_json(layout.split_report)
    assert report["near_duplicate_pairs_across_splits"] == len(straddling)
    listed = {tuple(sorted((e["a"], e["b"]))) for e in report["near_duplicate_examples"]}
    assert listed == straddling
    if pairs:
        assert len(straddling) >= 1
    else:
        assert report["near_duplicate_pairs_across_splits"] == 0


# --------------------------------------------------------------------------- BatchAugment


def _batch(n: int = 8, seed: int = 0) -> torch.Tensor:
    """n copies of one asymmetric image (1 channel, 24x24) in [0, 1]."""
    image = torch.zeros(1, 24, 24)
    image[0, 4:12, 6:18] = 0.8
    image[0, 14:20, 3:8] = 0.5
    image += 0.1 * torch.rand(1, 24, 24, generator=torch.Generator().manual_seed(seed))
    return image.clamp(0, 1).expand(n, 1, 24, 24).contiguous()


NEUTRAL = {
    "rotation": 0.0,
    "scale": (1.0, 1.0),
    "translate": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "noise_std": 0.0,
    "erase_prob": 0.0,
}


def _augment(config: AugmentConfig, images: torch.Tensor, seed: int) -> torch.Tensor:
    return BatchAugment(config)(images.clone(), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "strength",
    [
        {},  # the committed defaults
        {"rotation": 30.0},
        {"scale": (0.7, 1.3)},
        {"translate": 0.2},
        {"brightness": 0.5},
        {"contrast": 0.5},
        {"noise_std": 0.05},
        {"erase_prob": 1.0, "erase_scale": (0.1, 0.3)},
    ],
    ids=lambda s: ",".join(s) or "defaults",
)
def test_each_image_of_a_batch_gets_its_own_parameters(strength: dict[str, Any]) -> None:
    config = AugmentConfig(**{**NEUTRAL, **strength}) if strength else AugmentConfig()
    images = _batch()
    output = _augment(config, images, seed=3)
    assert output.shape == images.shape and output.dtype == images.dtype
    assert float(output.min()) >= 0.0 and float(output.max()) <= 1.0
    flat = output.reshape(len(output), -1)
    distinct = {tuple(row.tolist()) for row in flat}
    assert len(distinct) > 1, "every image of the batch was transformed the same way"
    assert not torch.allclose(output, images)


def test_strong_augmentation_stays_in_range_and_keeps_shape() -> None:
    config = AugmentConfig(
        rotation=180.0,
        scale=(0.5, 2.0),
        translate=0.5,
        hflip=True,
        vflip=True,
        brightness=0.95,
        contrast=0.95,
        noise_std=1.0,
        erase_prob=1.0,
        erase_scale=(0.1, 0.5),
        fill="reflection",
    )
    images = torch.rand(16, 3, 20, 28, generator=torch.Generator().manual_seed(1))
    output = _augment(config, images, seed=5)
    assert output.shape == images.shape
    assert float(output.min()) >= 0.0 and float(output.max()) <= 1.0
    assert torch.isfinite(output).all()


def test_the_generator_seed_decides_the_output() -> None:
    config = AugmentConfig()
    images = _batch(seed=1)
    assert torch.equal(_augment(config, images, seed=11), _augment(config, images, seed=11))
    assert not torch.equal(_augment(config, images, seed=11), _augment(config, images, seed=12))

    as_uint8 = (images * 255).round().to(torch.uint8)
    first = augment_uint8(as_uint8, config, torch.Generator().manual_seed(4), batch_size=3)
    again = augment_uint8(as_uint8, config, torch.Generator().manual_seed(4), batch_size=3)
    assert first.dtype == torch.uint8 and first.shape == as_uint8.shape
    assert torch.equal(first, again)


@pytest.mark.parametrize("fill", ["zeros", "border", "reflection"])
def test_zero_strength_is_the_identity(fill: str) -> None:
    config = AugmentConfig(**NEUTRAL, fill=fill)
    images = torch.rand(8, 3, 17, 23, generator=torch.Generator().manual_seed(2))
    output = _augment(config, images, seed=9)
    assert output.shape == images.shape
    assert torch.allclose(output, images, atol=1e-5, rtol=0)
