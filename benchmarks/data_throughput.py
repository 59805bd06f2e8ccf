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

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import report
from tasks.augmentation import BatchAugment, torchvision_equivalent
from tasks.config import load_params
from tasks.datasets import PACKED_DIR, RAW_FILES, load_split
from tasks.io import read_json
from tasks.split import SPLIT_FILE
from tasks.train import PackedBatches

EPOCHS = 3


class NaiveImages(Dataset):
    """Decode, convert, resize and augment one image per __getitem__."""

    def __init__(self, paths: list[str], labels: np.ndarray, params, meta: dict):
        self.paths, self.labels = paths, labels
        self.size, self.channels = params.data.image_size, params.data.channels
        self.transform = torchvision_equivalent(params.augment)
        self.mean = torch.tensor(meta["mean"]).view(-1, 1, 1)
        self.std = torch.tensor(meta["std"]).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(RAW_FILES / self.paths[index]) as image:
            image = image.convert("L" if self.channels == 1 else "RGB")
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        tensor = self.transform(image)
        return (tensor - self.mean) / self.std, int(self.labels[index])


def naive_rate(params, meta: dict) -> float:
    split = pd.read_csv(SPLIT_FILE, dtype=str, keep_default_na=False)
    train = split[split["split"] == "train"]
    class_index = {label: i for i, label in enumerate(meta["classes"])}
    labels = train["label"].map(class_index).to_numpy()
    loader = DataLoader(
        NaiveImages(list(train["path"]), labels, params, meta),
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


def pipeline_rate(params, meta: dict) -> float:
    images, labels = load_split("train", PACKED_DIR)
    batches = PackedBatches(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        params.train.batch_size,
        True,
        params.seed,
    )
    augment = BatchAugment(params.augment)
    channels = meta["channels"]
    mean = torch.tensor(meta["mean"]).view(1, channels, 1, 1)
    std = torch.tensor(meta["std"]).view(1, channels, 1, 1)
    generator = torch.Generator().manual_seed(params.seed)
    count, start = 0, time.perf_counter()
    for epoch in range(EPOCHS):
        batches.set_epoch(epoch)
        for batch, _labels in batches:
            augmented = (augment(batch.float().div_(255.0), generator) - mean) / std
            count += len(augmented)
    return count / (time.perf_counter() - start)


def main() -> None:
    params = load_params()
    meta = read_json(PACKED_DIR / "meta.json")
    pipeline_rate(params, meta)  # warm-up (thread pools, allocator)
    naive = naive_rate(params, meta)
    pipeline = pipeline_rate(params, meta)
    report(
        "data_throughput",
        {
            "pipeline_img_s": pipeline,
            "naive_img_s": naive,
            "ratio": pipeline / naive,
            "epochs": EPOCHS,
            "images_per_epoch": int(meta["counts"]["train"]),
            "image_size": params.data.image_size,
            "target_ratio": 5.0,
        },
    )


if __name__ == "__main__":
    main()
