"""train_throughput: training images per second on whatever device is here, fp32 vs mixed precision.

Run with ``python -m benchmarks.train_throughput`` (after ``make run``). Trains the configured
network for a few epochs on the packed + augmented train split with `train.accelerator: auto`
(the GPU when there is one), once in full precision (`32-true`) and once in mixed precision
(`bf16-mixed` where the device supports bf16, else `16-mixed` on a GPU), and writes
reports/bench/train_throughput.json with images/s for both and their ratio (target: mixed
precision at least as fast as fp32, ratio >= 1.0).
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import Check, finish
from tasks.core.config import Params, load_params, with_overrides
from tasks.core.layout import Layout
from tasks.data.packed import Arrays, PackedMeta, load_arrays
from tasks.modeling.fit import fit_once

EPOCHS = 3
# mixed precision is offered to speed training up: it must at least not slow it down here
TARGET_RATIO = 1.0


def images_per_second(params: Params, arrays: Arrays, meta: PackedMeta) -> float:
    start = time.perf_counter()
    _network, history = fit_once(params, arrays, meta)
    elapsed = time.perf_counter() - start
    return len(history.epochs) * len(arrays.train[1]) / elapsed


def main() -> None:
    layout = Layout.discover()
    on_gpu = torch.cuda.is_available()
    mixed = "bf16-mixed" if (not on_gpu or torch.cuda.is_bf16_supported()) else "16-mixed"
    base = with_overrides(
        load_params(layout.params_file),
        {"train.max_epochs": EPOCHS, "train.patience": EPOCHS + 1, "train.accelerator": "auto"},
    )
    meta = PackedMeta.load(layout.packed_meta)
    arrays = load_arrays(layout, with_test=False)
    warm_up = {"train.max_epochs": 1, "train.patience": 2}  # first-fit costs out of the timing
    images_per_second(with_overrides(base, warm_up), arrays, meta)
    full = images_per_second(with_overrides(base, {"train.precision": "32-true"}), arrays, meta)
    half = images_per_second(with_overrides(base, {"train.precision": mixed}), arrays, meta)
    finish(
        "train_throughput",
        {
            "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
            "fp32_img_s": full,
            "mixed_img_s": half,
            "mixed_precision": mixed,
            "ratio": half / full,
            "epochs": EPOCHS,
            "train_images": len(arrays.train[1]),
            "arch": base.model.arch,
        },
        [Check("ratio", half / full, ">=", TARGET_RATIO)],
    )


if __name__ == "__main__":
    main()
