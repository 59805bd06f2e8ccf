"""Checks of the produced data: what `tests/data/` asserts on a real run, and what a user can run
on their own data (they are part of the product, not only of CI).

- :func:`every_class_everywhere` and :func:`class_balance`: each split holds every class, in
  shares close to the whole set's (a split that hides a class gives a perfect, wrong score);
- :func:`no_leakage`: no image (the same pixels after packing) is in two splits;
- :func:`normalization_from_train`: the normalization statistics are the train split's alone
  (statistics taken over validation or test images leak them into training).
"""

from __future__ import annotations

import hashlib

import numpy as np

from tasks.core.checks import CheckResult
from tasks.data.packed import MIN_STD, PackedMeta, Split


def every_class_everywhere(splits: dict[str, Split], classes: list[str]) -> CheckResult:
    """The number of (split, class) pairs with no image; passes at 0."""
    missing = [
        f"{name}:{classes[c]}"
        for name, (_images, labels) in splits.items()
        for c in range(len(classes))
        if not (labels == c).any()
    ]
    return CheckResult(
        "every_class_everywhere",
        float(len(missing)),
        0.0,
        not missing,
        f"(missing: {', '.join(missing[:10])})" if missing else "",
    )


def class_balance(splits: dict[str, Split], num_classes: int, max_share_gap: float) -> CheckResult:
    """The largest gap between a class's share in one split and its share over all splits."""
    every_label = np.concatenate([labels for _images, labels in splits.values()])
    overall = np.bincount(every_label, minlength=num_classes) / max(len(every_label), 1)
    worst, where = 0.0, ""
    for name, (_images, labels) in splits.items():
        share = np.bincount(labels, minlength=num_classes) / max(len(labels), 1)
        gap = float(np.abs(share - overall).max())
        if gap > worst:
            worst, where = gap, f"{name}, class index {int(np.abs(share - overall).argmax())}"
    return CheckResult(
        "class_balance", worst, max_share_gap, worst <= max_share_gap, f"(worst: {where})"
    )


def no_leakage(splits: dict[str, Split]) -> CheckResult:
    """The number of packed images whose exact pixels also appear in another split."""
    owner: dict[str, str] = {}
    shared: list[str] = []
    for name, (images, _labels) in splits.items():
        seen_here: set[str] = set()
        for image in images:
            key = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
            if key in owner and owner[key] != name and key not in seen_here:
                shared.append(f"{owner[key]}/{name}")
            owner.setdefault(key, name)
            seen_here.add(key)
    return CheckResult(
        "no_leakage",
        float(len(shared)),
        0.0,
        not shared,
        f"(pairs of splits sharing images: {sorted(set(shared))})" if shared else "",
    )


def normalization_from_train(
    meta: PackedMeta, train_images: np.ndarray, tolerance: float = 1e-9
) -> CheckResult:
    """The largest difference between meta.json's mean/std and the train split's own."""
    pixels = train_images.astype(np.float64) / 255.0
    mean = pixels.mean(axis=(0, 2, 3))
    std = np.maximum(pixels.std(axis=(0, 2, 3)), MIN_STD)
    difference = float(
        max(np.abs(mean - np.array(meta.mean)).max(), np.abs(std - np.array(meta.std)).max())
    )
    return CheckResult(
        "normalization_from_train",
        difference,
        tolerance,
        difference <= tolerance,
        "(meta.json mean/std vs the train split's)",
    )
