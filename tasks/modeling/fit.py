"""Fitting: the network for a config, the Trainer, one plain fit, and k-fold cross-validation.

`fit_once` is the plain fit (no checkpoints, no logger, one device) that cross-validation folds,
tuning trials and benchmarks share; the train stage builds its final fit from the same parts
(`make_network`, `build_trainer`, `regularization_callbacks`, `quiet_fit`).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn

from tasks.core.config import Params
from tasks.core.errors import UserError
from tasks.data.packed import Arrays, PackedMeta
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


def make_module(params: Params, meta: PackedMeta) -> Classifier:
    """A fresh Classifier (network + the data's preprocessing) for `params`, seeded first."""
    return Classifier(
        make_network(params, meta), preprocessing_for(meta), len(meta.classes), params
    )


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
) -> tuple[nn.Module, History]:
    """One plain fit (no checkpoints, no logger, one device): used by CV folds and tuning trials.

    `ckpt_path` resumes from a Lightning checkpoint (a restored tuning trial).
    """
    L.seed_everything(params.seed, workers=True, verbose=False)
    module = make_module(params, meta)
    history = History()
    callbacks = [history, *regularization_callbacks(params), *(extra_callbacks or [])]
    steps = steps_per_epoch(arrays, params.train.batch_size)
    trainer = build_trainer(params, callbacks, distributed=False, steps_per_epoch=steps)
    data = PackedDataModule(arrays, params.train.batch_size, params.seed)
    quiet_fit(trainer, module, data, ckpt_path=ckpt_path)
    return module.network, history


def cross_validate(params: Params, arrays: Arrays, meta: PackedMeta) -> dict[str, Any]:
    """k-fold CV over train+val; an image's augmented copies stay in its fold.

    `arrays.folds` assigns a fold to every original train image, then every val image (split's
    order); `arrays.train` holds the train originals first, then their augmented copies.
    """
    folds = arrays.folds
    train_x, train_y = arrays.train
    val_x, val_y = arrays.val
    if folds is None:
        raise UserError(
            f"cv: train.cv_folds={params.train.cv_folds} but no folds were packed; re-run the "
            "split stage"
        )
    n_train_originals = len(folds) - len(val_y)
    if n_train_originals <= 0 or len(train_y) % n_train_originals:
        raise UserError(
            f"cv: data/packed/folds.npy ({len(folds)} entries) does not match the train "
            f"({len(train_y)}) and val ({len(val_y)}) arrays; re-run the split stage"
        )
    pool_x = np.concatenate([train_x[:n_train_originals], val_x])
    pool_y = np.concatenate([train_y[:n_train_originals], val_y])
    copies_x = train_x[n_train_originals:]
    copies_y = train_y[n_train_originals:]
    copies_fold = np.tile(folds[:n_train_originals], len(copies_y) // max(n_train_originals, 1))
    results = []
    for fold in range(int(folds.max()) + 1):
        held_out = folds == fold
        fold_arrays = Arrays(
            train=(
                np.concatenate([pool_x[~held_out], copies_x[copies_fold != fold]]),
                np.concatenate([pool_y[~held_out], copies_y[copies_fold != fold]]),
            ),
            val=(pool_x[held_out], pool_y[held_out]),
        )
        _network, history = fit_once(params, fold_arrays, meta)
        best = history.best()
        results.append({"fold": fold, **{k: best.get(k) for k in ("epoch", *METRICS)}})
        accuracy = best.get("val_acc", 0.0)
        print(f"train: cv fold {fold + 1}/{folds.max() + 1}: val accuracy {accuracy:.4f}")
    summary: dict[str, Any] = {"folds": len(results), "per_fold": results, "mean": {}, "std": {}}
    for metric in METRICS:
        values = np.array([r[metric] for r in results if r.get(metric) is not None], dtype=float)
        summary["mean"][metric] = float(values.mean()) if len(values) else None
        summary["std"][metric] = float(values.std()) if len(values) else None
    return summary
