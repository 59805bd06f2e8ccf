"""data_throughput: sixfold's training data path vs a naive per-image PIL Dataset + DataLoader.

Run with ``python -m benchmarks.data_throughput`` (after ``make run``). Both paths deliver the
same train images, resized and augmented the same way (rotation, scale, translation,
brightness/contrast, noise, random erasing), normalized, in batches of `train.batch_size`:

- sixfold: the packed uint8 array, batches cut by index (`PackedBatches`), augmented per image in
  one batched call (`BatchAugment`);
- naive: a Dataset that opens each PNG with PIL, converts and resizes it, applies the equivalent
  torchvision.transforms.v2 pipeline image by image, and a DataLoader that collates, with what a
  competent user would set: one worker process per core, persistent workers, shuffling.

Both sides get a warm-up epoch before the timed ones (worker start-up, allocator, thread pools).
The naive side with `num_workers=0` is reported too. Packing is a one-time cost the naive side
does not pay (decoding and resizing every train image once, in the split stage): it is measured
here on the same images, with the number of epochs after which packing has paid for itself.

Writes reports/bench/data_throughput.json with `pipeline_img_s`, `naive_img_s`, `ratio`
(target >= 5) and the packing figures.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import Check, finish
from tasks.core.config import Params, load_params
from tasks.core.layout import Layout
from tasks.data.augmentation import BatchAugment, torchvision_equivalent
from tasks.data.mirror import resolve_auto
from tasks.data.packed import PackedMeta, load_split, pack
from tasks.modeling.batches import PackedBatches
from tasks.modeling.fit import preprocessing_for

EPOCHS = 3
TARGET_RATIO = 5.0  # packed batches must beat per-image loading clearly, not marginally


class NaiveImages(Dataset):
    """Decode, convert, resize and augment one image per __getitem__."""

    def __init__(
        self,
        files_dir: Path,
        paths: list[str],
        labels: np.ndarray,
        params: Params,
        meta: PackedMeta,
    ):
        self.files_dir, self.paths, self.labels = files_dir, paths, labels
        self.size, self.channels = meta.image_size, meta.channels  # as packed (auto resolved)
        self.transform = torchvision_equivalent(params.augment)
        # the shared preprocessing's statistics, shaped (C, 1, 1) for one image at a time
        preprocessing = preprocessing_for(meta)
        self.mean, self.std = preprocessing.mean[0], preprocessing.std[0]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files_dir / self.paths[index]) as image:
            image = image.convert("L" if self.channels == 1 else "RGB")
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        tensor = self.transform(image)
        return (tensor - self.mean) / self.std, int(self.labels[index])


def train_rows(meta: PackedMeta, layout: Layout) -> tuple[list[str], np.ndarray]:
    """The train split's file paths (as the split stage recorded them) and integer labels."""
    split = pd.read_csv(layout.split_file, dtype=str, keep_default_na=False)
    train = split[split["split"] == "train"]
    class_index = {label: i for i, label in enumerate(meta.classes)}
    return list(train["path"]), train["label"].map(class_index).to_numpy()


def naive_rate(params: Params, meta: PackedMeta, layout: Layout, workers: int) -> float:
    """Images/s of the per-image Dataset + DataLoader over EPOCHS epochs, after a warm-up."""
    paths, labels = train_rows(meta, layout)
    loader = DataLoader(
        NaiveImages(layout.raw_files, paths, labels, params, meta),
        batch_size=params.train.batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    torch.manual_seed(params.seed)
    for _images, _labels in loader:  # warm-up epoch: worker start-up is not throughput
        pass
    count, start = 0, time.perf_counter()
    for _ in range(EPOCHS):
        for images, _labels in loader:
            count += len(images)
    return count / (time.perf_counter() - start)


def pipeline_rate(params: Params, meta: PackedMeta, layout: Layout) -> float:
    """Images/s of packed batches + batched augmentation over EPOCHS epochs, after a warm-up."""
    images, labels = load_split("train", layout.packed_dir)
    batches = PackedBatches(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        params.train.batch_size,
        True,
        params.seed,
    )
    augment = BatchAugment(params.augment)
    preprocessing = preprocessing_for(meta)  # scale, augment, normalize: as the Classifier does
    generator = torch.Generator().manual_seed(params.seed)

    def epoch(number: int) -> int:
        batches.set_epoch(number)
        count = 0
        for batch, _labels in batches:
            count += len(preprocessing.normalize(augment(preprocessing.scale(batch), generator)))
        return count

    epoch(-1)  # warm-up epoch
    start = time.perf_counter()
    count = sum(epoch(number) for number in range(EPOCHS))
    return count / (time.perf_counter() - start)


def packing_seconds(meta: PackedMeta, layout: Layout) -> float:
    """The one-time cost of packing the train split (decode, convert, resize), as split does."""
    paths, _labels = train_rows(meta, layout)
    start = time.perf_counter()
    pack(paths, layout.raw_files, meta.channels, meta.image_size)
    return time.perf_counter() - start


def main() -> None:
    layout = Layout.discover()
    params = resolve_auto(load_params(layout.params_file), layout)  # augment.hflip: auto
    meta = PackedMeta.load(layout.packed_meta)
    workers = os.cpu_count() or 1
    naive = naive_rate(params, meta, layout, workers)
    naive_in_process = naive_rate(params, meta, layout, 0)
    pipeline = pipeline_rate(params, meta, layout)
    packing_s = packing_seconds(meta, layout)
    images = int(meta.counts["train"])
    saved_per_epoch = images / naive - images / pipeline
    finish(
        "data_throughput",
        {
            "pipeline_img_s": pipeline,
            "naive_img_s": naive,
            "naive_workers": workers,
            "naive_in_process_img_s": naive_in_process,
            "ratio": pipeline / naive,
            "ratio_vs_in_process": pipeline / naive_in_process,
            "packing_s": packing_s,
            "packing_pays_off_after_epochs": packing_s / saved_per_epoch
            if saved_per_epoch > 0
            else None,
            "epochs": EPOCHS,
            "images_per_epoch": images,
            "image_size": params.data.image_size,
        },
        [Check("ratio", pipeline / naive, ">=", TARGET_RATIO)],
    )


if __name__ == "__main__":
    main()
