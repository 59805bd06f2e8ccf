"""augment: seeded offline augmentation of the train split (`augment.copies` per image).

Run on its own with ``python -m tasks.augment`` (after split).

Writes `data/augmented/train_{x,y}.npy`: the original train images followed by `copies`
augmented versions of each (same labels), and `reports/augment/preview.png`, a grid of originals
beside their augmented copies. The same seed gives byte-identical arrays. Validation and test
images are never augmented.

It also measures whether the labels survive a left-right mirror (`tasks.data.mirror`) and writes
the verdict to `data/augmented/mirror.json`: `augment.hflip: auto` follows it, here for the
offline copies and in every stage that trains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tasks.core.config import AugmentConfig, Params, load_params_or_exit
from tasks.core.layout import Layout
from tasks.core.plotting import pyplot, save_figure
from tasks.core.runner import stage_main
from tasks.data.augmentation import augment_uint8
from tasks.data.mirror import mirror_verdict, resolve_auto, verdict_line, write_verdict
from tasks.data.packed import load_split

PREVIEW_ROWS = 8  # originals shown in the preview grid, spread over the classes


def augment_train(
    images: np.ndarray, labels: np.ndarray, config: AugmentConfig, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Originals followed by `config.copies` augmented copies; deterministic for a seed (CPU)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    originals = torch.from_numpy(images)
    copies = [augment_uint8(originals, config, generator).numpy() for _ in range(config.copies)]
    all_images = np.concatenate([images, *copies]) if copies else images.copy()
    all_labels = np.concatenate([labels] * (config.copies + 1))
    return np.ascontiguousarray(all_images), all_labels


def save_preview(images: np.ndarray, copies: int, count: int, path: Path) -> None:
    """Rows of: an original, then its augmented copies."""
    plt = pyplot()
    originals = len(images) // (copies + 1)
    count = min(count, originals)
    picks = np.linspace(0, originals - 1, count).astype(int)  # spread over the (sorted) classes
    columns = copies + 1
    figure, axes = plt.subplots(count, columns, figsize=(1.4 * columns, 1.4 * count), squeeze=False)
    for row in range(count):
        for column in range(columns):
            image = images[picks[row] + column * originals]
            axis = axes[row, column]
            axis.imshow(image.transpose(1, 2, 0).squeeze(), cmap="gray", vmin=0, vmax=255)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title("original" if column == 0 else f"copy {column}", fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def augment_stage(params: Params, layout: Layout | None = None) -> tuple[int, str]:
    """Write data/augmented and the preview for `layout` (default: the current repository).

    Returns the number of train images written (originals + copies) and the line about flips
    (empty when there is nothing to say).
    """
    layout = layout or Layout.discover()
    images, labels = load_split("train", layout.packed_dir)
    val = load_split("val", layout.packed_dir)
    classes = len(np.unique(np.concatenate([labels, val[1]])))
    verdict = mirror_verdict((images, labels), val, classes, params.seed)
    setting = params.augment.hflip
    write_verdict(layout, verdict, setting)
    params = resolve_auto(params, layout)
    augmented, augmented_labels = augment_train(images, labels, params.augment, params.seed)
    layout.augmented_dir.mkdir(parents=True, exist_ok=True)
    np.save(layout.augmented_dir / "train_x.npy", augmented)
    np.save(layout.augmented_dir / "train_y.npy", augmented_labels)
    save_preview(augmented, params.augment.copies, PREVIEW_ROWS, layout.augment_preview)
    return len(augmented), verdict_line(verdict, setting)


def main() -> None:
    layout = Layout.discover()
    params = load_params_or_exit(layout.params_file)
    written, flips = augment_stage(params, layout)
    if flips:
        print(f"augment: {flips}")
    originals = written // (params.augment.copies + 1)
    print(
        f"augment: {originals} train images + {params.augment.copies} augmented copies each "
        f"= {written} -> {layout.relative(layout.augmented_dir)} "
        f"(preview: {layout.relative(layout.augment_preview)})"
    )


if __name__ == "__main__":
    stage_main(main)
