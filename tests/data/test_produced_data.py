"""Checks on the data a real run produced (digits): every class in every split, balanced shares,
no image in two splits, normalization from the train split only, typed metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.core.layout import Layout
from tasks.data.checks import (
    class_balance,
    every_class_everywhere,
    no_leakage,
    normalization_from_train,
)
from tasks.data.packed import PackedMeta, load_arrays, load_split

pytestmark = pytest.mark.slow


def test_every_split_holds_every_class_in_its_share(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    meta = PackedMeta.load(layout.packed_meta)
    splits = {name: load_split(name, layout.packed_dir) for name in ("train", "val", "test")}
    assert every_class_everywhere(splits, meta.classes).passed
    balance = class_balance(splits, len(meta.classes), max_share_gap=0.02)
    assert balance.passed, str(balance)
    assert {name: len(labels) for name, (_x, labels) in splits.items()} == meta.counts


def test_no_image_is_in_two_splits(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    splits = {name: load_split(name, layout.packed_dir) for name in ("train", "val", "test")}
    result = no_leakage(splits)
    assert result.passed, str(result)


def test_normalization_comes_from_the_train_split_only(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    meta = PackedMeta.load(layout.packed_meta)
    train_x, _ = load_split("train", layout.packed_dir)
    assert normalization_from_train(meta, train_x).passed
    every_image = np.concatenate(
        [load_split(n, layout.packed_dir)[0] for n in ("train", "val", "test")]
    )
    assert not normalization_from_train(meta, every_image).passed  # the check tells them apart


def test_augmented_copies_follow_their_originals(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    arrays = load_arrays(layout)
    train_x, train_y = load_split("train", layout.packed_dir)
    augmented_x, augmented_y = arrays.train
    copies = len(augmented_y) // len(train_y) - 1
    assert copies >= 1 and len(augmented_y) == len(train_y) * (copies + 1)
    assert np.array_equal(augmented_x[: len(train_y)], train_x)  # originals first, unchanged
    assert np.array_equal(augmented_y, np.tile(train_y, copies + 1))  # copies keep their label
    assert not np.array_equal(augmented_x[len(train_y) :][: len(train_y)], train_x)
