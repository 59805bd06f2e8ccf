"""train_overhead: sixfold's Lightning training vs a plain PyTorch loop doing the same work.

Run with ``python -m benchmarks.train_overhead`` (after ``make run``: it reads data/packed and
data/augmented). Same network, data, batch size, epochs, online augmentation, optimizer,
schedule, gradient clipping, a validation pass and a train-accuracy pass (eval mode, un-augmented
images) every epoch, deterministic algorithms in both; Lightning also writes its best and last
checkpoints, dvclive curves and progress bar, as in the train stage's final fit. Early stopping
is off so both run the same epochs. Each side is timed from the construction of its objects
(module, checkpoints, curves and Trainer; network, batches, optimizer and schedule) to the end
of its last epoch. Writes reports/bench/train_overhead.json with `lightning_s`, `plain_s` and
`ratio` (target <= 1.10). After one warm-up fit of each, the sides run ROUNDS times,
alternating; the fastest run of each counts.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from benchmarks.common import BENCH_DIR, Check, finish
from tasks.core.config import Params, load_params
from tasks.core.layout import Layout
from tasks.data.augmentation import BatchAugment
from tasks.data.mirror import resolve_auto
from tasks.data.packed import Arrays, PackedMeta, load_arrays
from tasks.modeling.batches import PackedBatches, PackedDataModule
from tasks.modeling.callbacks import DvcLiveCurves, History
from tasks.modeling.fit import (
    build_trainer,
    make_module,
    make_network,
    packed_originals,
    preprocessing_for,
    quiet_fit,
    steps_per_epoch,
    train_reference,
)
from tasks.modeling.module import lr_schedule

EPOCHS = 5
ROUNDS = 3
TARGET_RATIO = 1.10  # what Lightning's conveniences may cost over a hand-written loop


def _params(layout: Layout) -> Params:
    params = resolve_auto(load_params(layout.params_file), layout)  # augment.hflip: auto
    train = params.train.model_copy(
        update={"max_epochs": EPOCHS, "patience": 10_000, "accelerator": "cpu", "devices": 1}
    )
    return params.model_copy(update={"train": train})


def lightning_run(params: Params, arrays: Arrays, meta: PackedMeta) -> float:
    L.seed_everything(params.seed, verbose=False)
    with tempfile.TemporaryDirectory() as scratch:
        # timed from here: building the module, checkpoints, curves and Trainer is this side's
        # real cost (the plain side's clock likewise starts before its network and optimizer)
        start = time.perf_counter()
        # as the train stage's final fit: train accuracy on un-augmented images after each
        # epoch, the best checkpoint when val accuracy improves and the last one every epoch
        reference = train_reference(arrays, packed_originals(arrays, meta), params.seed)
        module = make_module(params, meta, reference)
        steps = steps_per_epoch(arrays, params.train.batch_size)
        best = ModelCheckpoint(dirpath=scratch, filename="best", monitor="val_acc", mode="max")
        last = ModelCheckpoint(dirpath=scratch, filename="last", enable_version_counter=False)
        history = History()
        curves = DvcLiveCurves(history, Path(scratch) / "dvclive")  # the stage's dvclive series
        trainer = build_trainer(params, [history, curves, best, last], steps_per_epoch=steps)
        data = PackedDataModule(arrays, params.train.batch_size, params.seed)
        quiet_fit(trainer, module, data)
        return time.perf_counter() - start


def plain_run(params: Params, arrays: Arrays, meta: PackedMeta, epochs: int = EPOCHS) -> float:
    torch.manual_seed(params.seed)
    start = time.perf_counter()
    train = params.train
    network = make_network(params, meta)
    preprocessing = preprocessing_for(meta)  # the one preprocessing, as the Lightning side's
    augment = BatchAugment(params.augment)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)
    tensors = {
        k: (torch.from_numpy(x), torch.from_numpy(y).long())
        for k, (x, y) in arrays.splits().items()
    }
    train_batches = PackedBatches(*tensors["train"], train.batch_size, True, params.seed)
    val_batches = PackedBatches(*tensors["val"], train.batch_size, False, params.seed)
    reference_x, reference_y = train_reference(arrays, packed_originals(arrays, meta), params.seed)
    reference_batches = PackedBatches(
        torch.from_numpy(reference_x),
        torch.from_numpy(reference_y).long(),
        train.batch_size,
        False,
        params.seed,
    )
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=train.lr, weight_decay=train.weight_decay
    )
    schedule = lr_schedule(optimizer, train, epochs * len(train_batches))  # the Lightning side's
    for epoch in range(epochs):
        network.train()
        train_batches.set_epoch(epoch)
        generator = torch.Generator().manual_seed(params.seed + epoch)
        train_correct = 0
        for images, labels in train_batches:
            images = preprocessing.normalize(augment(preprocessing.scale(images), generator))
            logits = network(images)
            loss = loss_fn(logits, labels)
            train_correct += int((logits.argmax(1) == labels).sum())  # Lightning logs train_acc
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), train.gradient_clip or 1e9)
            optimizer.step()
            if schedule is not None:
                schedule.step()
        network.eval()
        correct = 0
        with torch.no_grad():
            for batches in (val_batches, reference_batches):  # val, then train accuracy
                for images, labels in batches:
                    logits = network(preprocessing.normalize(preprocessing.scale(images)))
                    correct += int((logits.argmax(1) == labels).sum())
    return time.perf_counter() - start


def main() -> None:
    layout = Layout.discover()
    params = _params(layout)
    meta = PackedMeta.load(layout.packed_meta)
    arrays = load_arrays(layout, with_test=False)
    torch.use_deterministic_algorithms(True)  # what Lightning's deterministic=True sets, for both
    lightning_times, plain_times = [], []
    # the first fit in a process is slower for either (allocator, kernels, caches): warm up both,
    # then alternate so drifts in machine speed hit both sides alike
    plain_run(params, arrays, meta, epochs=1)
    lightning_run(params, arrays, meta)
    for _ in range(ROUNDS):
        plain_times.append(plain_run(params, arrays, meta))
        lightning_times.append(lightning_run(params, arrays, meta))
    lightning_s, plain_s = min(lightning_times), min(plain_times)
    finish(
        "train_overhead",
        {
            "lightning_s": lightning_s,
            "plain_s": plain_s,
            "ratio": lightning_s / plain_s,
            "epochs": EPOCHS,
            "train_images": len(arrays.train[1]),
            "batch_size": params.train.batch_size,
            "lightning_runs": lightning_times,
            "plain_runs": plain_times,
        },
        [Check("ratio", lightning_s / plain_s, "<=", TARGET_RATIO)],
    )


if __name__ == "__main__":
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    main()
