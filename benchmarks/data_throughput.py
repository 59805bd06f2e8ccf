"""data_throughput: sixfold's training data path vs a naive per-image PIL Dataset + DataLoader.

Run with ``python -m benchmarks.data_throughput`` (after ``make run``). Both paths deliver the
same train images, resized and augmented the same way (rotation, scale, translation,
brightness/contrast, noise, random erasing), normalized, in batches of `train.batch_size`:

- sixfold: the packed uint8 array, batches cut by index (`PackedBatches`), augmented per image in
  one batched call (`BatchAugment`);
- naive: a Dataset that opens each PNG with PIL, converts and resizes it, applies the equivalent
  torchvision.transforms.v2 pipeline image by image, and a DataLoader that collates.

Writes reports/bench/data_throughput.json with `pipeline_img_s`, `naive_img_s`, `ratio`
(target >= 5).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import report
from tasks.core.config import Params, load_params
from tasks.core.layout import Layout
from tasks.data.augmentation import BatchAugment, torchvision_equivalent
from tasks.data.packed import PackedMeta, load_split
from tasks.modeling.batches import PackedBatches
from tasks.modeling.fit import preprocessing_for

EPOCHS = 3


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
        self.size, self.channels = params.data.image_size, params.data.channels
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


def naive_rate(params: Params, meta: PackedMeta, layout: Layout) -> float:
    split = pd.read_csv(layout.split_file, dtype=str, keep_default_na=False)
    train = split[split["split"] == "train"]
    class_index = {label: i for i, label in enumerate(meta.classes)}
    labels = train["label"].map(class_index).to_numpy()
    loader = DataLoader(
        NaiveImages(layout.raw_files, list(train["path"]), labels, params, meta),
        batch_size=params.train.batch_size,
        shuffle=True,
        num_workers=0,
    )
    torch.manual_seed(params.seed)
    count, start = 0, time.perf_counter()
    for _ in range(EPOCHS):
        for images, _labels in loader:
            count += len(images)
    return count / (time.perf_counter() - start)


def pipeline_rate(params: Params, meta: PackedMeta, layout: Layout) -> float:
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
    count, start = 0, time.perf_counter()
    for epoch in range(EPOCHS):
        batches.set_epoch(epoch)
        for batch, _labels in batches:
            augmented = preprocessing.normalize(augment(preprocessing.scale(batch), generator))
            count += len(augmented)
    return count / (time.perf_counter() - start)


def main() -> None:
    layout = Layout.discover()
    params = load_params(layout.params_file)
    meta = PackedMeta.load(layout.packed_meta)
    pipeline_rate(params, meta, layout)  # warm-up (thread pools, allocator)
    naive = naive_rate(params, meta, layout)
    pipeline = pipeline_rate(params, meta, layout)
    report(
        "data_throughput",
        {
            "pipeline_img_s": pipeline,
            "naive_img_s": naive,
            "ratio": pipeline / naive,
            "epochs": EPOCHS,
            "images_per_epoch": int(meta.counts["train"]),
            "image_size": params.data.image_size,
            "target_ratio": 5.0,
        },
    )


if __name__ == "__main__":
    main()
