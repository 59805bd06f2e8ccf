"""`augment.hflip: auto`: flips when the data's labels survive a mirror, measured on the data.

A mirrored 2 is not a 2, but a mirrored photo of a texture, a leaf or a street is still one.
Which of the two a data set is, the data tells: a quick linear classifier (ridge regression on
standardized pixels, fitted on the train split in well under a second) is scored on the
validation images as they are and mirrored left to right. When the mirrored images score as
well as the originals (within MIRROR_TOLERANCE_SE binomial standard errors of the accuracy, at
least MIN_TOLERANCE), what the classifier learnt does not depend on the side things are on, and
flips are on; when mirroring costs accuracy, they are off. A classifier that learnt too little to
tell (validation accuracy below CHANCE_MULTIPLE times chance) leaves flips off, the safe side.

Measured (validation accuracy, as is -> mirrored): the digits 0.937 -> 0.289 (off); the photo
set of `tasks.data.photos` 0.333 -> 0.341 (on; chance 0.071).

The augment stage measures it (whatever `augment.hflip` says, so a fixed setting gets a hint)
and writes the verdict to `data/augmented/mirror.json`; `resolve_auto` gives the stages that
train (tune, train, continual) their params with `auto` replaced by the verdict. The search can
still choose the other value: `augment.hflip` is a dimension of the default space, and the
verdict is only its first trial (the params.yaml anchor).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from tasks.core.config import Params, with_overrides
from tasks.core.errors import MissingInput
from tasks.core.layout import Layout

MIRROR_FILE = "mirror.json"
MIRROR_TOLERANCE_SE = 2.0  # binomial standard errors of the validation accuracy
MIN_TOLERANCE = 0.02
CHANCE_MULTIPLE = 2.0
MAX_SIDE = 16  # images are shrunk to at most 16 x 16 per channel (area average) for the fit
MAX_TRAIN = 5000  # seeded sample of the train split at most: the fit stays under a second
RIDGE_ALPHA = 10.0


def mirror_verdict(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    classes: int,
    seed: int,
) -> dict[str, Any]:
    """Whether the labels survive a left-right mirror; the figures behind the verdict."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y = train
    val_x, val_y = val
    if len(val_x) == 0 or len(np.unique(train_y)) < 2:
        return {
            "flips": False,
            "reason": "no validation images or a single class in train: cannot tell, flips off",
        }
    if len(train_x) > MAX_TRAIN:
        picks = np.random.default_rng(seed).choice(len(train_x), MAX_TRAIN, replace=False)
        train_x, train_y = train_x[picks], train_y[picks]
    model = make_pipeline(StandardScaler(), RidgeClassifier(alpha=RIDGE_ALPHA))
    model.fit(_features(train_x), train_y)

    def accuracy(images: np.ndarray) -> float:
        return float((model.predict(_features(images)) == val_y).mean())

    as_is = accuracy(val_x)
    mirrored = accuracy(val_x[..., ::-1])
    chance = 1.0 / max(classes, 1)
    tolerance = max(MIN_TOLERANCE, MIRROR_TOLERANCE_SE * math.sqrt(as_is * (1 - as_is) / len(val_y)))
    figures = (
        f"a linear classifier's validation accuracy {as_is:.3f} as is, {mirrored:.3f} mirrored"
    )
    if as_is < CHANCE_MULTIPLE * chance:
        flips, reason = False, f"{figures}: too close to chance ({chance:.3f}) to tell, flips off"
    elif as_is - mirrored <= tolerance:
        flips, reason = True, f"{figures} (within {tolerance:.3f}): the labels survive a mirror"
    else:
        flips, reason = False, f"{figures}: mirroring changes what the images show"
    return {
        "flips": flips,
        "told": as_is >= CHANCE_MULTIPLE * chance,  # False: too weak a classifier to tell
        "val_accuracy": as_is,
        "mirrored_accuracy": mirrored,
        "tolerance": tolerance,
        "chance": chance,
        "val_images": int(len(val_y)),
        "reason": reason,
    }


def _features(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, C * h * w) floats, h, w <= MAX_SIDE by block averaging."""
    n, channels, height, width = images.shape
    step_h, step_w = math.ceil(height / MAX_SIDE), math.ceil(width / MAX_SIDE)
    h, w = height // step_h, width // step_w
    cropped = images[:, :, : h * step_h, : w * step_w].astype(np.float32) / 255.0
    blocks = cropped.reshape(n, channels, h, step_h, w, step_w).mean(axis=(3, 5))
    return blocks.reshape(n, -1)


def write_verdict(layout: Layout, verdict: dict[str, Any], setting: Any) -> None:
    path = layout.augmented_dir / MIRROR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"setting": setting, **verdict}, indent=2) + "\n")


def read_verdict(layout: Layout) -> dict[str, Any]:
    path = layout.augmented_dir / MIRROR_FILE
    if not path.is_file():
        raise MissingInput(
            f"augment.hflip is auto but {layout.relative(path)} is missing: run the augment "
            "stage first (dvc repro augment), which measures whether the labels survive a mirror"
        )
    return json.loads(path.read_text())


def resolve_auto(params: Params, layout: Layout) -> Params:
    """`params` with `augment.hflip: auto` replaced by the augment stage's verdict."""
    if params.augment.hflip != "auto":
        return params
    return with_overrides(params, {"augment.hflip": bool(read_verdict(layout)["flips"])})


def verdict_line(verdict: dict[str, Any], setting: Any) -> str:
    """The augment stage's line about flips: the verdict, or a hint when a fixed setting
    disagrees with what the data shows."""
    if setting == "auto":
        return f"augment.hflip auto -> {str(verdict['flips']).lower()}: {verdict['reason']}"
    if bool(setting) != verdict["flips"] and verdict.get("told", False):
        return (
            f"augment.hflip is {str(setting).lower()}, but {verdict['reason']} "
            "(augment.hflip: auto follows the data)"
        )
    return ""
