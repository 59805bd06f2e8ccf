"""The LightningModule: one shared step for train/val/test, one accuracy metric per split.

The network (`tasks.modeling.networks`) and the preprocessing (`tasks.modeling.preprocessing`)
are plain modules it holds; batches arrive as uint8 and are augmented online (on the device,
`augment.online`) between scaling and normalizing.

Train accuracy is measured twice. The training batches give `train_{loss,acc}_augmented`:
augmented, dropout on, and averaged over an epoch whose weights kept changing, so they understate
overfitting. `train_{loss,acc}` are measured like the validation figures they are compared with:
after the epoch, in eval mode, on a fixed sample of un-augmented train images (`train_reference`,
no larger than the val split, so the extra work is at most one more validation pass).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torchmetrics
from torch import nn

from tasks.core.config import Params, TrainConfig
from tasks.data.augmentation import BatchAugment
from tasks.modeling.preprocessing import Preprocessing

# The augmentation of epoch e on rank r uses seed * 100_003 + e * 1009 + r: distinct for every
# (seed, epoch, rank) while ranks < 1009 and epochs < 99 (primes, so seeds do not overlap).
AUGMENT_SEED_STRIDE = 100_003
AUGMENT_EPOCH_STRIDE = 1009

# the accumulators of `_shared_step`: the training batches, the train reference, val and test
SPLITS = ("train_augmented", "train", "val", "test")


def metric_name(split: str, stat: str) -> str:
    """What a split's statistic is logged as: `val`, `acc` -> `val_acc`; `train_augmented`,
    `acc` -> `train_acc_augmented`."""
    name, _, variant = split.partition("_")
    return "_".join(filter(None, (name, stat, variant)))


class Classifier(L.LightningModule):
    """One shared step for train/val/test; one accuracy metric object per split."""

    def __init__(
        self,
        network: nn.Module,
        preprocessing: Preprocessing,
        num_classes: int,
        params: Params,
        train_reference: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        super().__init__()
        self.network = network
        self.preprocessing = preprocessing
        self.params = params
        self.loss = nn.CrossEntropyLoss(label_smoothing=params.train.label_smoothing)
        self.accuracy = nn.ModuleDict(
            {
                f"{split}_acc": torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
                for split in SPLITS
            }
        )
        # un-augmented train images (uint8) and labels: `train_loss`/`train_acc` each epoch
        self.train_reference = None
        if train_reference is not None:
            images, labels = train_reference
            self.train_reference = (
                torch.from_numpy(np.ascontiguousarray(images)),
                torch.from_numpy(np.asarray(labels)).long(),
            )
        self.augment = BatchAugment(params.augment) if params.augment.online else None
        self.generator: torch.Generator | None = None
        # per-split running loss sum and image count; logged once per epoch (see _log_epoch)
        self._loss_sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    def on_train_epoch_start(self) -> None:
        # a generator per epoch and rank: an epoch gets the same augmentation, resumed or not
        seed = (
            self.params.seed * AUGMENT_SEED_STRIDE
            + self.current_epoch * AUGMENT_EPOCH_STRIDE
            + self.global_rank
        )
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int):
        # batches are always an (images, labels) pair: move them directly instead of Lightning's
        # generic walk over collections, and not at all on the CPU
        if device.type == "cpu":
            return batch
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # the shared preprocessing, with the random augmentation between scaling and normalizing
        images, labels = batch
        images = self.preprocessing.scale(images)
        if self.trainer.training and self.augment is not None and self.generator is not None:
            images = self.augment(images, self.generator)
        return self.preprocessing.normalize(images), labels

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
        """Log the epoch's mean loss and accuracy once (`train_augmented`: `train_*_augmented`).

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
        loss, acc = metric_name(split, "loss"), metric_name(split, "acc")
        self.log(loss, running / count, on_step=False, on_epoch=True, sync_dist=sync)
        self.log(acc, accuracy.compute(), on_step=False, on_epoch=True)  # synced
        accuracy.reset()

    def _measure_train_reference(self) -> None:
        """`_shared_step` over this rank's share of the train reference, as validation runs it.

        Called from the validation loop: eval mode, no gradients, no augmentation; in the same
        precision context as a validation step.
        """
        images, labels = self.train_reference
        rank, world = self.global_rank, self.trainer.world_size
        images, labels = images[rank::world], labels[rank::world]
        size = self.params.train.batch_size
        with self.trainer.precision_plugin.forward_context():
            for start in range(0, len(labels), size):
                batch = (images[start : start + size], labels[start : start + size])
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                self._shared_step(self.on_after_batch_transfer(batch, 0), "train")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_index: int) -> None:
        # the last batch, before the validation pass: History and the progress bar, which run
        # at the end of the epoch, then see this epoch's train metrics beside its val metrics
        if batch_index + 1 >= self.trainer.num_training_batches:
            self._log_epoch("train_augmented")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        if self.train_reference is not None and not self.trainer.sanity_checking:
            self._measure_train_reference()
            self._log_epoch("train")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
        return self._shared_step(batch, "train_augmented")

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


def lr_schedule(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int) -> Any:
    """`train.schedule` stepped once per batch over `total_steps`; None for `constant`."""
    if train.schedule == "constant":
        return None
    if train.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=train.lr, total_steps=max(total_steps, 1)
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
