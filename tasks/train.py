"""train: fit the configured network with PyTorch Lightning; export the best epoch's weights.

Run on its own with ``python -m tasks.train`` (after augment).

- Data: the packed arrays stay uint8 in memory; batches are cut by index (no per-sample
  collation), moved to the device, augmented online there (`augment.online`), then normalized
  with the train split's statistics.
- Regularization: AdamW weight decay, dropout, label smoothing, early stopping on validation loss
  (`train.patience`), a one-cycle or cosine schedule, gradient clipping.
- Compute: `train.accelerator` (auto: the GPU when present), `devices`, `precision`, `strategy`
  (ddp), `num_nodes`. Seeded and deterministic on CPU.
- Checkpoints: `models/checkpoints/last.ckpt` every epoch. If a run is interrupted, the next run
  with the same params and data resumes from it and says so.
- Transfer learning: `model.pretrained`, `model.freeze_backbone` (+ `train.finetune_epochs`:
  train the head alone for that many epochs, then unfreeze).
- k-fold cross-validation (`train.cv_folds` > 1): reports/cv.json, then the final fit.
- Reports: `reports/train.json` (best epoch, train/val accuracy, gap), learning curves through
  dvclive (`reports/dvclive/`, DVC plots) and `reports/plots/learning_curves.png`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torchmetrics
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from tqdm import tqdm

from tasks.augmentation import BatchAugment
from tasks.cli import UserError, stage_main
from tasks.config import ConfigError, Params, load_params_or_exit, with_overrides
from tasks.datasets import AUGMENTED_DIR, PACKED_DIR, load_arrays, require
from tasks.io import read_json, write_json
from tasks.models import MODEL_DIR, params_hash, save_model
from tasks.networks import (
    build_network,
    load_pretrained,
    read_state_dict,
    set_backbone_trainable,
)
from tasks.tune import BEST_PARAMS, read_best_params

TRAIN_REPORT = Path("reports/train.json")
CV_REPORT = Path("reports/cv.json")
CHECKPOINT_DIR = MODEL_DIR / "checkpoints"
DVCLIVE_DIR = Path("reports/dvclive")
CURVES_PLOT = Path("reports/plots/learning_curves.png")
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")

log = logging.getLogger("sixfold.train")


# --------------------------------------------------------------------------- data


class PackedBatches:
    """Shuffled (or ordered) batches of in-memory uint8 images, cut by index.

    Indexing a tensor with a batch of indices is one copy; a DataLoader over a TensorDataset
    would fetch and collate samples one by one. Sharded by rank for DDP (each rank sees a
    disjoint part of every epoch's permutation). Lightning calls `sampler.set_epoch` each epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    @property
    def sampler(self) -> PackedBatches:  # lets Lightning find set_epoch
        return self

    batch_sampler = None  # Lightning inspects it; batches are cut here, not by a sampler

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
            order = torch.randperm(len(self.labels), generator=generator)
        else:
            order = torch.arange(len(self.labels))
        if self.world_size > 1 and len(order):
            # every rank must run the same number of steps (DDP hangs otherwise): pad the order
            # by repeating its start, as torch's DistributedSampler does
            pad = (-len(order)) % self.world_size
            order = torch.cat([order, order.repeat(pad // len(order) + 1)[:pad]])
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        shard = -(-len(self.labels) // self.world_size) if len(self.labels) else 0
        return -(-shard // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self._indices()
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start : start + self.batch_size]
            yield self.images[batch], self.labels[batch]


class PackedDataModule(L.LightningDataModule):
    """Train/val/test batches over packed uint8 arrays (N, C, H, W)."""

    def __init__(
        self, arrays: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int, seed: int
    ):
        super().__init__()
        self.tensors = {
            name: (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y).long())
            for name, (x, y) in arrays.items()
        }
        self.batch_size, self.seed = batch_size, seed

    def _batches(self, name: str, shuffle: bool) -> PackedBatches:
        images, labels = self.tensors[name]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return PackedBatches(images, labels, self.batch_size, shuffle, self.seed, rank, world)

    def train_dataloader(self) -> PackedBatches:
        return self._batches("train", shuffle=True)

    def val_dataloader(self) -> PackedBatches:
        return self._batches("val", shuffle=False)

    def test_dataloader(self) -> PackedBatches:
        return self._batches("test", shuffle=False)


# --------------------------------------------------------------------------- model


class Classifier(L.LightningModule):
    """One shared step for train/val/test; one accuracy metric object per split."""

    def __init__(self, network: nn.Module, num_classes: int, params: Params, meta: dict[str, Any]):
        super().__init__()
        self.network = network
        self.params = params
        self.loss = nn.CrossEntropyLoss(label_smoothing=params.train.label_smoothing)
        self.accuracy = nn.ModuleDict(
            {
                f"{split}_acc": torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
                for split in ("train", "val", "test")
            }
        )
        channels = meta["channels"]
        self.register_buffer("mean", torch.tensor(meta["mean"]).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(meta["std"]).view(1, channels, 1, 1))
        self.augment = BatchAugment(params.augment) if params.augment.online else None
        self.generator: torch.Generator | None = None
        # per-split running loss sum and image count; logged once per epoch (see _log_epoch)
        self._loss_sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    def on_train_epoch_start(self) -> None:
        # a generator per epoch and rank: an epoch gets the same augmentation, resumed or not
        seed = self.params.seed * 100_003 + self.current_epoch * 1009 + self.global_rank
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int):
        # batches are always an (images, labels) pair: move them directly instead of Lightning's
        # generic walk over collections, and not at all on the CPU
        if device.type == "cpu":
            return batch
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        images = images.float().div_(255.0)
        if self.trainer.training and self.augment is not None and self.generator is not None:
            images = self.augment(images, self.generator)
        return (images - self.mean) / self.std, labels

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.loss(logits, labels)
        self.accuracy[f"{split}_acc"].update(logits.detach(), labels)
        weighted = loss.detach() * len(labels)
        running = self._loss_sums.get(split)
        self._loss_sums[split] = weighted if running is None else running + weighted
        self._counts[split] = self._counts.get(split, 0) + len(labels)
        return loss

    def _log_epoch(self, split: str) -> None:
        """Log the epoch's mean loss and accuracy once.

        `self.log` on every step (Lightning's per-step result collection, device moves, and the
        metric's forward computing a batch value nobody reads) was the largest part of
        Lightning's overhead on small CPU models; one log call per epoch gives the same values.
        """
        count = self._counts.pop(split, 0)
        running = self._loss_sums.pop(split, None)
        if not count or running is None:
            return
        accuracy = self.accuracy[f"{split}_acc"]
        sync = self.trainer.world_size > 1
        self.log(f"{split}_loss", running / count, on_step=False, on_epoch=True, sync_dist=sync)
        self.log(f"{split}_acc", accuracy.compute(), on_step=False, on_epoch=True)  # synced
        accuracy.reset()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_index: int) -> None:
        # the last batch, before the validation pass: History and the progress bar, which run
        # at the end of the epoch, then see this epoch's train metrics beside its val metrics
        if batch_index + 1 >= self.trainer.num_training_batches:
            self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_index: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_index: int) -> None:
        self._shared_step(batch, "test")

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        if gradient_clip_val and optimizer.defaults.get("fused"):
            # fp32 and bf16-mixed gradients are not scaled: clip them directly (Lightning's mixed
            # precision plugin refuses to clip for any fused optimizer)
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> Any:
        train = self.params.train
        parameters = list(self.network.parameters())
        # one fused kernel per step on a GPU instead of AdamW's per-tensor launches (AdamW's step
        # took 7 ms of CPU time a step with the default CNN on an H200, the GPU mostly idle)
        # (16-mixed keeps the per-tensor path: its grad scaler must unscale before clipping)
        fused = (
            bool(parameters)
            and all(p.is_cuda for p in parameters)
            and self.trainer.precision != "16-mixed"
        )
        optimizer = torch.optim.AdamW(
            parameters, lr=train.lr, weight_decay=train.weight_decay, fused=fused or None
        )
        schedule = lr_schedule(optimizer, train, int(self.trainer.estimated_stepping_batches))
        if schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def lr_schedule(optimizer: torch.optim.Optimizer, train: Any, total_steps: int) -> Any:
    """`train.schedule` stepped once per batch over `total_steps`; None for `constant`."""
    if train.schedule == "constant":
        return None
    if train.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=train.lr, total_steps=max(total_steps, 1)
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))


class History(L.Callback):
    """Per-epoch metrics; saved in checkpoints so a resumed run keeps the whole curve."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # runs after the epoch's validation loop, so train and val metrics are both current
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in METRICS}
        self.epochs.append({"epoch": trainer.current_epoch, **metrics})

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))

    def best(self) -> dict[str, float]:
        scored = [e for e in self.epochs if "val_acc" in e]
        return max(scored, key=lambda e: (e["val_acc"], -e.get("val_loss", 0.0))) if scored else {}


class EpochProgress(L.Callback):
    """One progress bar per epoch, with the epoch's metrics when it ends.

    Lightning's own bar refreshes its postfix (a device sync per metric) and draws a second bar
    for every validation pass; on small CPU models that costs several percent of training time.
    tqdm throttles drawing itself (`mininterval`), so updating it every batch is cheap.
    """

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            total = int(trainer.num_training_batches)
            epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            self.bar = tqdm(total=total, desc=epoch, unit="batch", mininterval=0.5, leave=True)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.bar is not None:
            metrics = trainer.callback_metrics
            shown = {k: f"{float(metrics[k]):.4f}" for k in METRICS if k in metrics}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.close()
            self.bar = None


class FreezeBackbone(L.Callback):
    """Train only the head for the first `epochs` epochs (all of them when epochs == 0)."""

    def __init__(self, epochs: int, max_epochs: int):
        self.until = epochs if epochs > 0 else max_epochs

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        frozen = trainer.current_epoch < self.until
        set_backbone_trainable(module.network, trainable=not frozen)
        if trainer.current_epoch == self.until and trainer.is_global_zero:
            print(f"train: epoch {self.until}: backbone unfrozen, fine-tuning every layer")


# --------------------------------------------------------------------------- fitting


def make_network(params: Params, meta: dict[str, Any]) -> nn.Module:
    network = build_network(
        params.model.arch,
        meta["channels"],
        len(meta["classes"]),
        params.model.width,
        params.model.dropout,
        meta["image_size"],
    )
    if params.model.pretrained:
        state = read_state_dict(params.model.pretrained, dict(params.data.storage_options))
        adapted = load_pretrained(network, state, params.model.pretrained)
        note = f" (adapted: {', '.join(adapted)})" if adapted else ""
        print(f"train: loaded pretrained weights from {params.model.pretrained}{note}")
    return network


def _trainer(
    params: Params,
    callbacks: list[L.Callback],
    logger: Any = False,
    distributed: bool = True,
    steps_per_epoch: int = 1,
) -> L.Trainer:
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


def _regularization_callbacks(params: Params) -> list[L.Callback]:
    callbacks: list[L.Callback] = [
        EarlyStopping(monitor="val_loss", mode="min", patience=params.train.patience)
    ]
    if params.model.freeze_backbone:
        callbacks.append(FreezeBackbone(params.train.finetune_epochs, params.train.max_epochs))
    return callbacks


def fit_once(
    params: Params,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    meta: dict[str, Any],
    extra_callbacks: list[L.Callback] | None = None,
    ckpt_path: str | None = None,
) -> tuple[nn.Module, History]:
    """One plain fit (no checkpoints, no logger, one device): used by CV folds and tuning trials.

    `ckpt_path` resumes from a Lightning checkpoint (a restored tuning trial).
    """
    L.seed_everything(params.seed, workers=True, verbose=False)
    network = make_network(params, meta)
    module = Classifier(network, len(meta["classes"]), params, meta)
    history = History()
    steps = -(-len(arrays["train"][1]) // params.train.batch_size)
    callbacks = [history, *_regularization_callbacks(params), *(extra_callbacks or [])]
    trainer = _trainer(params, callbacks, distributed=False, steps_per_epoch=steps)
    data = PackedDataModule(arrays, params.train.batch_size, params.seed)
    _quiet_fit(trainer, module, data, ckpt_path=ckpt_path)
    return network, history


def _quiet_fit(trainer: L.Trainer, module: L.LightningModule, data: Any, **kwargs: Any) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*isinstance.*LeafSpec.*")
        # intended: the module, not the data module, owns batch transfer and normalization
        warnings.filterwarnings("ignore", ".*overridden .* in `LightningModule` but have passed.*")
        trainer.fit(module, datamodule=data, **kwargs)


def run_fingerprint(params: Params, packed_dir: Path, augmented_dir: Path) -> str:
    """What a checkpoint must match to be resumed: the params and the exact training data."""
    digest = hashlib.sha256(params_hash(params).encode())
    for folder in (packed_dir, augmented_dir):
        for path in sorted(folder.glob("*")) if folder.exists() else []:
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 22):
                    digest.update(chunk)
    return digest.hexdigest()[:24]


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def _resume_point(fingerprint: str, checkpoint_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None (and a clean checkpoint folder) to start over."""
    state_file, last = checkpoint_dir / "state.json", checkpoint_dir / "last.ckpt"
    state = read_json(state_file) if state_file.exists() else {}
    if state.get("fingerprint") == fingerprint and not state.get("complete") and last.exists():
        return last
    if _is_rank_zero():
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        checkpoint_dir.mkdir(parents=True)
        write_json(state_file, {"fingerprint": fingerprint, "complete": False})
    return None


def cross_validate(
    params: Params, arrays: dict, meta: dict[str, Any], folds: np.ndarray
) -> dict[str, Any]:
    """k-fold CV over train+val; an image's augmented copies stay in its fold.

    `folds` assigns a fold to every original train image, then every val image (split's order);
    `arrays["train"]` holds the train originals first, then their augmented copies.
    """
    train_x, train_y = arrays["train"]
    val_x, val_y = arrays["val"]
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
        fold_arrays = {
            "train": (
                np.concatenate([pool_x[~held_out], copies_x[copies_fold != fold]]),
                np.concatenate([pool_y[~held_out], copies_y[copies_fold != fold]]),
            ),
            "val": (pool_x[held_out], pool_y[held_out]),
        }
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


def plot_curves(epochs: list[dict[str, float]], path: Path = CURVES_PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(9, 3.2))
    x = [e["epoch"] for e in epochs]
    for split, style in (("train", "-"), ("val", "--")):
        loss_axis.plot(x, [e.get(f"{split}_loss") for e in epochs], style, label=split)
        acc_axis.plot(x, [e.get(f"{split}_acc") for e in epochs], style, label=split)
    loss_axis.set(title="loss", xlabel="epoch")
    acc_axis.set(title="accuracy", xlabel="epoch")
    loss_axis.legend()
    acc_axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def train(
    params: Params,
    packed_dir: Path = PACKED_DIR,
    augmented_dir: Path = AUGMENTED_DIR,
    out: Path = MODEL_DIR,
) -> dict[str, Any] | None:
    """CV (if configured), then the final fit with checkpoints/resume; exports the best epoch.

    Returns the training report on the global-zero process, None on other DDP ranks.
    """
    require(packed_dir / "meta.json")
    meta = read_json(packed_dir / "meta.json")
    arrays = load_arrays(packed_dir, augmented_dir)

    if params.train.cv_folds > 1 and _is_rank_zero():
        folds_file = packed_dir / "folds.npy"
        if not folds_file.exists():
            raise SystemExit(
                f"error: train.cv_folds={params.train.cv_folds} but {folds_file} is missing; "
                "re-run the split stage"
            )
        write_json(CV_REPORT, cross_validate(params, arrays, meta, np.load(folds_file)))
    elif _is_rank_zero():
        write_json(CV_REPORT, {"folds": 1, "note": "train.cv_folds <= 1: no cross-validation"})

    L.seed_everything(params.seed, workers=True, verbose=False)
    checkpoint_dir = out / "checkpoints"
    fingerprint = run_fingerprint(params, packed_dir, augmented_dir)
    resume_from = _resume_point(fingerprint, checkpoint_dir)
    if resume_from is not None and _is_rank_zero():
        epoch = torch.load(resume_from, map_location="cpu", weights_only=False).get("epoch", "?")
        print(f"train: resuming from {resume_from} (epoch {epoch} done) after an interrupted run")

    network = make_network(params, meta)
    module = Classifier(network, len(meta["classes"]), params, meta)
    history = History()
    best = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="best", monitor="val_acc", mode="max", save_last=True
    )
    from dvclive.lightning import DVCLiveLogger

    logger = DVCLiveLogger(
        dir=str(DVCLIVE_DIR), save_dvc_exp=False, dvcyaml=False, resume=resume_from is not None
    )
    steps = -(-len(arrays["train"][1]) // params.train.batch_size)
    callbacks = [history, best, *_regularization_callbacks(params)]
    trainer = _trainer(params, callbacks, logger=logger, steps_per_epoch=steps)
    data = PackedDataModule(arrays, params.train.batch_size, params.seed)
    _quiet_fit(trainer, module, data, ckpt_path=str(resume_from) if resume_from else None)

    if not trainer.is_global_zero:
        return None
    if best.best_model_path:
        checkpoint = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
        state = {
            k.removeprefix("network."): v
            for k, v in checkpoint["state_dict"].items()
            if k.startswith("network.")
        }
        network.load_state_dict(state)
    save_model(network.cpu(), meta, params, out)
    write_json(checkpoint_dir / "state.json", {"fingerprint": fingerprint, "complete": True})

    top = history.best()
    gap = (top.get("train_acc") or 0.0) - (top.get("val_acc") or 0.0)
    report = {
        "best_epoch": int(top.get("epoch", -1)),
        "epochs_run": len(history.epochs),
        "stopped_early": trainer.current_epoch < params.train.max_epochs,
        "train_acc": top.get("train_acc"),
        "val_acc": top.get("val_acc"),
        "train_loss": top.get("train_loss"),
        "val_loss": top.get("val_loss"),
        "train_val_gap": gap,
        "overfit_warning": gap > params.train.overfit_warn_gap,
        "device": str(trainer.strategy.root_device),
        "world_size": trainer.world_size,
        "resumed": resume_from is not None,
    }
    write_json(TRAIN_REPORT, report)
    plot_curves(history.epochs)
    if report["overfit_warning"]:
        print(
            f"warning: train-val accuracy gap {gap:.3f} > train.overfit_warn_gap="
            f"{params.train.overfit_warn_gap}: the model may be overfitting; see {CURVES_PLOT}",
            file=sys.stderr,
        )
    return report


def main() -> None:
    params = load_params_or_exit()
    tuned = read_best_params()
    if tuned:
        try:
            params = with_overrides(params, tuned)
        except ConfigError as error:
            raise ConfigError(f"{BEST_PARAMS}: {error}; re-run the tune stage") from None
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in tuned.items()
        )
        print(f"train: using the tuned values from {BEST_PARAMS}: {shown}")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    report = train(params)
    if report is None:
        return
    print(
        f"train: best epoch {report['best_epoch']} of {report['epochs_run']}: val accuracy "
        f"{report['val_acc']:.4f} (train {report['train_acc']:.4f}, gap "
        f"{report['train_val_gap']:+.4f}) on {report['device']} -> {MODEL_DIR}/model.safetensors"
    )


if __name__ == "__main__":
    stage_main(main)
