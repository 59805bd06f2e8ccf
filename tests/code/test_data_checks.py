"""The data checks can fail: a hidden class, a leaked image, statistics over the wrong images."""

from __future__ import annotations

import numpy as np

from tasks.data.checks import (
    class_balance,
    every_class_everywhere,
    no_leakage,
    normalization_from_train,
)
from tasks.data.packed import PackedMeta


def _split(labels: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), 1, 4, 4), dtype=np.uint8)
    return images, np.array(labels)


def test_a_split_missing_a_class_is_found() -> None:
    splits = {"train": _split([0, 1, 2, 0, 1, 2], 0), "test": _split([0, 0, 1], 1)}
    result = every_class_everywhere(splits, ["a", "b", "c"])
    assert not result.passed and result.value == 1 and "test:c" in result.detail
    splits["test"] = _split([0, 1, 2], 1)
    assert every_class_everywhere(splits, ["a", "b", "c"]).passed


def test_class_shares_far_from_the_whole_set_are_found() -> None:
    balanced = {"train": _split([0, 1] * 10, 0), "val": _split([0, 1] * 3, 1)}
    assert class_balance(balanced, 2, max_share_gap=0.01).passed
    skewed = {"train": _split([0, 1] * 10, 0), "val": _split([0] * 5 + [1], 1)}
    assert not class_balance(skewed, 2, max_share_gap=0.1).passed


def test_an_image_in_two_splits_is_found() -> None:
    train, test = _split([0, 1, 0], 0), _split([1, 0], 1)
    assert no_leakage({"train": train, "test": test}).passed
    test[0][1] = train[0][2]
    result = no_leakage({"train": train, "test": test})
    assert not result.passed and result.value == 1


def test_statistics_over_other_images_are_found() -> None:
    train_x, _ = _split([0] * 20, 0)
    pixels = train_x / 255.0
    meta = PackedMeta.create(
        classes=["a", "b"],
        image_size=4,
        channels=1,
        mean=[float(pixels.mean())],
        std=[float(pixels.std())],
        counts={"train": 20},
        near_duplicate_pairs_across_splits=0,
    )
    assert normalization_from_train(meta, train_x).passed
    other_x, _ = _split([0] * 20, 5)
    assert not normalization_from_train(meta, np.concatenate([train_x, other_x])).passed
