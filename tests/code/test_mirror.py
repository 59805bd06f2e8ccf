"""augment.hflip: auto: the augment stage measures whether the labels survive a mirror, and every
stage that trains follows its verdict (tasks/data/mirror.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tasks.core.config import AugmentConfig, ConfigError, Params, with_overrides
from tasks.core.errors import MissingInput
from tasks.core.layout import Layout
from tasks.data.augmentation import BatchAugment
from tasks.data.mirror import (
    MIRROR_FILE,
    mirror_verdict,
    read_verdict,
    resolve_auto,
    verdict_line,
    write_verdict,
)

SIDE = 16


def _split(images: np.ndarray, labels: np.ndarray, seed: int = 0):
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(len(images) * 0.7)
    train, val = order[:cut], order[cut:]
    return (images[train], labels[train]), (images[val], labels[val])


def _sided(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mirror-sensitive classes: a bright bar on the left third (0) or on the right third (1)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (count, 1, SIDE, SIDE)).astype(np.uint8)
    labels = np.arange(count) % 2
    for index, label in enumerate(labels):
        column = rng.integers(1, 4) if label == 0 else SIDE - 1 - rng.integers(1, 4)
        images[index, 0, :, column] = 230
    return images, labels


def _textures(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mirror-proof classes: a horizontal bar at any row (0) or a vertical bar near the middle,
    as often on the left of it as on the right (1)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (count, 1, SIDE, SIDE)).astype(np.uint8)
    labels = np.arange(count) % 2
    for index, label in enumerate(labels):
        if label == 0:
            images[index, 0, rng.integers(2, SIDE - 2), :] = 220
        else:
            offset = rng.integers(0, 3)
            column = SIDE // 2 - 1 - offset if rng.random() < 0.5 else SIDE // 2 + offset
            images[index, 0, :, column] = 220
    return images, labels


def test_sided_classes_turn_flips_off() -> None:
    train, val = _split(*_sided(300, seed=1))
    verdict = mirror_verdict(train, val, classes=2, seed=0)
    assert verdict["flips"] is False
    assert verdict["val_accuracy"] > 0.9 > 0.5 > verdict["mirrored_accuracy"]
    assert "mirroring changes what the images show" in verdict["reason"]


def test_mirror_proof_classes_turn_flips_on() -> None:
    train, val = _split(*_textures(300, seed=2))
    verdict = mirror_verdict(train, val, classes=2, seed=0)
    assert verdict["flips"] is True
    assert verdict["val_accuracy"] - verdict["mirrored_accuracy"] <= verdict["tolerance"]
    assert "survive a mirror" in verdict["reason"]


def test_the_digits_turn_flips_off() -> None:
    digits = load_digits()
    images = (digits.images * 255 / 16).astype(np.uint8)[:, None]
    train, val = _split(images, digits.target)
    verdict = mirror_verdict(train, val, classes=10, seed=0)
    assert verdict["flips"] is False
    assert verdict["val_accuracy"] > 0.85 and verdict["mirrored_accuracy"] < 0.5


def test_a_classifier_at_chance_cannot_tell_and_leaves_flips_off() -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (200, 1, SIDE, SIDE)).astype(np.uint8)
    train, val = _split(images, np.arange(200) % 4)
    verdict = mirror_verdict(train, val, classes=4, seed=0)
    assert verdict["flips"] is False and verdict["told"] is False
    assert "too close to chance" in verdict["reason"]


def test_large_images_and_many_images_are_shrunk_for_the_fit() -> None:
    """64 px colour images are averaged down to 16 x 16 per channel; the verdict still holds."""
    images, labels = _sided(240, seed=4)
    big = np.repeat(np.repeat(np.repeat(images, 4, axis=2), 4, axis=3), 3, axis=1)
    train, val = _split(big, labels)
    verdict = mirror_verdict(train, val, classes=2, seed=0)
    assert verdict["flips"] is False and verdict["val_accuracy"] > 0.9


def _layout(tmp_path: Path, flips: bool | None) -> Layout:
    layout = Layout(tmp_path)
    if flips is not None:
        write_verdict(layout, {"flips": flips, "reason": "measured"}, "auto")
    return layout


@pytest.mark.parametrize("flips", [False, True])
def test_auto_follows_the_verdict(tmp_path: Path, flips: bool) -> None:
    params = with_overrides(Params(), {"augment.hflip": "auto"})
    resolved = resolve_auto(params, _layout(tmp_path, flips))
    assert resolved.augment.hflip is flips
    assert resolved.model_dump(exclude={"augment"}) == params.model_dump(exclude={"augment"})


@pytest.mark.parametrize("setting", [False, True])
def test_a_fixed_setting_wins_over_the_verdict(tmp_path: Path, setting: bool) -> None:
    params = with_overrides(Params(), {"augment.hflip": setting})
    assert resolve_auto(params, _layout(tmp_path, not setting)).augment.hflip is setting


def test_auto_without_a_verdict_names_the_stage_to_run(tmp_path: Path) -> None:
    params = with_overrides(Params(), {"augment.hflip": "auto"})
    with pytest.raises(MissingInput, match=r"data/augmented/mirror.json is missing.*augment"):
        resolve_auto(params, _layout(tmp_path, None))


def test_an_unresolved_auto_never_reaches_the_augmentation() -> None:
    """ "auto" is a true string: it must not silently mean flips."""
    with pytest.raises(ValueError, match="resolved"):
        BatchAugment(AugmentConfig(hflip="auto"))


def test_the_setting_accepts_auto_and_booleans_only() -> None:
    assert AugmentConfig(hflip="auto").hflip == "auto"
    assert AugmentConfig(hflip=True).hflip is True
    with pytest.raises(ConfigError, match=r"augment\.hflip"):
        with_overrides(Params(), {"augment.hflip": "sometimes"})


def test_the_stage_line_gives_the_verdict_or_a_hint(tmp_path: Path) -> None:
    measured = {"flips": True, "told": True, "reason": "the labels survive a mirror"}
    assert verdict_line(measured, "auto").startswith("augment.hflip auto -> true: ")
    assert "augment.hflip: auto follows the data" in verdict_line(measured, False)
    assert verdict_line(measured, True) == ""
    # a classifier too weak to tell gives no hint against a fixed setting
    unsure = {"flips": False, "told": False, "reason": "too close to chance to tell, flips off"}
    assert verdict_line(unsure, True) == ""
    write_verdict(Layout(tmp_path), measured, False)
    saved = json.loads((tmp_path / "data" / "augmented" / MIRROR_FILE).read_text())
    assert saved["setting"] is False and read_verdict(Layout(tmp_path))["flips"] is True
