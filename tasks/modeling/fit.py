"""Fitting: the network for a config, the Trainer, one plain fit, and k-fold cross-validation.

`fit_once` is the plain fit (no checkpoints, no logger, one device) that cross-validation folds,
tuning trials and benchmarks share; the train stage builds its final fit from the same parts
(`make_network`, `build_trainer`, `regularization_callbacks`, `quiet_fit`).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn

from tasks.core.config import Params
from tasks.core.errors import UserError
from tasks.data.packed import Arrays, PackedMeta, Split
from tasks.modeling.batches import PackedDataModule
from tasks.modeling.callbacks import METRICS, EpochProgress, FreezeBackbone, History
from tasks.modeling.module import Classifier
from tasks.modeling.networks import build_network
from tasks.modeling.preprocessing import Preprocessing
from tasks.modeling.pretrained import load_pretrained, read_state_dict


def make_network(params: Params, meta: PackedMeta) -> nn.Module:
    """The configured network for the packed data, with pretrained weights when configured."""
    network = build_network(
        params.model.arch,
        meta.channels,
        len(meta.classes),
        params.model.width,
        params.model.dropout,
        meta.image_size,
    )
    if params.model.pretrained:
        state = read_state_dict(params.model.pretrained, dict(params.data.storage_options))
        adapted = load_pretrained(network, state, params.model.pretrained)
        note = f" (adapted: {', '.join(adapted)})" if adapted else ""
        print(f"train: loaded pretrained weights from {params.model.pretrained}{note}")
    return network


def preprocessing_for(meta: PackedMeta) -> Preprocessing:
    return Preprocessing(meta.image_size, meta.channels, meta.mean, meta.std)


def make_module(
    params: Params, meta: PackedMeta, train_reference: Split | None = None
) -> Classifier:
    """A fresh Classifier (network + the data's preprocessing) for `params`.

    `train_reference`: the un-augmented train images its `train_acc` is measured on after each
    epoch (see `train_reference`); without it only the training batches' `train_acc_augmented`
    is logged.
    """
    return Classifier(
        make_network(params, meta),
        preprocessing_for(meta),
        len(meta.classes),
        params,
        train_reference=train_reference,
    )


def packed_originals(arrays: Arrays, meta: PackedMeta) -> int:
    """How many train images lead un-augmented: the packed train split (augment appends its
    copies after them)."""
    return min(meta.counts.get("train", len(arrays.train[1])), len(arrays.train[1]))


def train_reference(arrays: Arrays, originals: int, seed: int) -> Split:
    """What train accuracy is measured on: a seeded sample of the first `originals` train
    images (the un-augmented ones), as many as the val split holds, or all of them if fewer.

    As large as the val split, the measurement costs at most one more validation pass per epoch
    (a forward pass, no backward). Sorted, so it is read in the arrays' order.
    """
    images, labels = arrays.train
    originals = min(originals, len(labels))
    size = min(originals, max(len(arrays.val[1]), 1))
    chosen = np.sort(np.random.default_rng(seed).choice(originals, size=size, replace=False))
    return images[chosen], labels[chosen]


def is_rank_zero() -> bool:
    """True on the process that writes reports (the only one outside DDP)."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def build_trainer(
    params: Params,
    callbacks: list[L.Callback],
    logger: Any = False,
    distributed: bool = True,
    steps_per_epoch: int = 1,
) -> L.Trainer:
    """The Trainer for `params.train` (distributed=False: one device, as for trials and folds)."""
    train = params.train
    strategy = train.strategy if distributed else "auto"
    gpus = torch.cuda.device_count() if train.accelerator in ("auto", "gpu", "cuda") else 0
    multi_process = distributed and (
        strategy == "ddp"
        or train.num_nodes > 1
        or (isinstance(train.devices, int) and train.devices > 1)
        or (train.devices == "auto" and gpus > 1)
    )
    if multi_process and params.model.freeze_backbone:
        # a frozen backbone gets no gradients; plain DDP would stop at the first step
        strategy = "ddp_find_unused_parameters_true"
    on_cpu = train.accelerator == "cpu" or (
        train.accelerator == "auto" and not torch.cuda.is_available()
    )
    trainer = L.Trainer(
        max_epochs=train.max_epochs,
        accelerator=train.accelerator,
        devices=train.devices if distributed else 1,
        strategy=strategy,
        num_nodes=train.num_nodes if distributed else 1,
        precision=train.precision,
        deterministic=True if on_cpu else "warn",
        logger=logger,
        callbacks=[*callbacks, EpochProgress()],
        enable_progress_bar=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_model_summary=False,
        gradient_clip_val=train.gradient_clip,
        log_every_n_steps=max(1, steps_per_epoch),
        use_distributed_sampler=False,  # PackedBatches shards by rank itself
        num_sanity_val_steps=0,
    )
    if not on_cpu:
        # deterministic mode also fills every new tensor with NaN (about 150 fill kernels a step
        # measured on an H200 with the default CNN); sixfold never reads uninitialized memory
        torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def regularization_callbacks(params: Params) -> list[L.Callback]:
    callbacks: list[L.Callback] = [
        EarlyStopping(monitor="val_loss", mode="min", patience=params.train.patience)
    ]
    if params.model.freeze_backbone:
        callbacks.append(FreezeBackbone(params.train.finetune_epochs, params.train.max_epochs))
    return callbacks


def steps_per_epoch(arrays: Arrays, batch_size: int) -> int:
    return -(-len(arrays.train[1]) // batch_size)


def quiet_fit(trainer: L.Trainer, module: L.LightningModule, data: Any, **kwargs: Any) -> None:
    """trainer.fit without the warnings that do not apply to sixfold's data path."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*isinstance.*LeafSpec.*")
        # intended: the module, not the data module, owns batch transfer and normalization
        warnings.filterwarnings("ignore", ".*overridden .* in `LightningModule` but have passed.*")
        trainer.fit(module, datamodule=data, **kwargs)


def fit_once(
    params: Params,
    arrays: Arrays,
    meta: PackedMeta,
    extra_callbacks: list[L.Callback] | None = None,
    ckpt_path: str | None = None,
    originals: int | None = None,
) -> tuple[nn.Module, History]:
    """One plain fit (no checkpoints, no logger, one device): used by CV folds and tuning trials.

    `ckpt_path` resumes from a Lightning checkpoint (a restored tuning trial). `originals`: how
    many train images lead un-augmented (default: the packed train split's count).
    """
    L.seed_everything(params.seed, workers=True, verbose=False)
    if originals is None:
        originals = packed_originals(arrays, meta)
    module = make_module(params, meta, train_reference(arrays, originals, params.seed))
    history = History()
    callbacks = [history, *regularization_callbacks(params), *(extra_callbacks or [])]
    steps = steps_per_epoch(arrays, params.train.batch_size)
    trainer = build_trainer(params, callbacks, distributed=False, steps_per_epoch=steps)
    data = PackedDataModule(arrays, params.train.batch_size, params.seed)
    quiet_fit(trainer, module, data, ckpt_path=ckpt_path)
    return module.network, history


class Fold(NamedTuple):
    """One cross-validation fold: what it trains and validates on."""

    arrays: Arrays  # train: the fold's originals, then their augmented copies; val: held out
    originals: int  # how many train images lead un-augmented


def fold_arrays(arrays: Arrays, fold: int) -> Fold:
    """The arrays fold `fold` trains and validates on (cross_validate fits exactly these).

    `arrays.folds` assigns a fold to every original train image, then every val image (split's
    order); `arrays.train` holds the train originals first, then their augmented copies, copy
    after copy in the originals' order. The pool (train originals + val) is split by fold; an
    augmented copy trains only in the folds where its original trains, never where it is held
    out.
    """
    folds = arrays.folds
    train_x, train_y = arrays.train
    val_x, val_y = arrays.val
    if folds is None:
        raise UserError("cv: no folds were packed; re-run the split stage")
    n_train_originals = len(folds) - len(val_y)
    if n_train_originals <= 0 or len(train_y) % n_train_originals:
        raise UserError(
            f"cv: data/packed/folds.npy ({len(folds)} entries) does not match the train "
            f"({len(train_y)}) and val ({len(val_y)}) arrays; re-run the split stage"
        )
    pool_x = np.concatenate([train_x[:n_train_originals], val_x])
    pool_y = np.concatenate([train_y[:n_train_originals], val_y])
    copies_fold = np.tile(folds[:n_train_originals], len(train_y) // n_train_originals - 1)
    held_out = folds == fold
    trained_copies = np.flatnonzero(copies_fold != fold) + n_train_originals
    train = (
        np.concatenate([pool_x[~held_out], train_x[trained_copies]]),
        np.concatenate([pool_y[~held_out], train_y[trained_copies]]),
    )
    validation = (pool_x[held_out], pool_y[held_out])
    return Fold(Arrays(train=train, val=validation), originals=int((~held_out).sum()))


def cross_validate(params: Params, arrays: Arrays, meta: PackedMeta) -> dict[str, Any]:
    """k-fold CV over train+val (`fold_arrays`); an image's augmented copies stay in its fold."""
    if arrays.folds is None:
        raise UserError(
            f"cv: train.cv_folds={params.train.cv_folds} but no folds were packed; re-run the "
            "split stage"
        )
    count = int(arrays.folds.max()) + 1
    results = []
    for fold in range(count):
        fold_data = fold_arrays(arrays, fold)
        _network, history = fit_once(params, fold_data.arrays, meta, originals=fold_data.originals)
        best = history.best()
        results.append({"fold": fold, **{k: best.get(k) for k in ("epoch", *METRICS)}})
        accuracy = best.get("val_acc", 0.0)
        print(f"train: cv fold {fold + 1}/{count}: val accuracy {accuracy:.4f}")
    summary: dict[str, Any] = {"folds": len(results), "per_fold": results, "mean": {}, "std": {}}
    for metric in METRICS:
        values = np.array([r[metric] for r in results if r.get(metric) is not None], dtype=float)
        summary["mean"][metric] = float(values.mean()) if len(values) else None
        summary["std"][metric] = float(values.std()) if len(values) else None
    return summary
