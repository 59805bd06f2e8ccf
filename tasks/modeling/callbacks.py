"""Lightning callbacks: the per-epoch history, a light progress bar, and the frozen backbone."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from tqdm import tqdm

from tasks.modeling.networks import set_backbone_trainable

# train_*: the un-augmented train sample in eval mode, after the epoch (what the train/val gap
# compares); train_*_augmented: the epoch's training batches as trained (augmented, dropout on)
SHOWN = ("train_loss", "train_acc", "val_loss", "val_acc")
METRICS = (*SHOWN, "train_loss_augmented", "train_acc_augmented")


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
        """The first epoch with the highest val_acc: the epoch whose weights train exports.

        The same rule as the checkpoint that holds them (`ModelCheckpoint(monitor="val_acc",
        mode="max")` replaces its best only on a strictly higher value), so a tie goes to the
        earlier epoch here too.
        """
        scored = [e for e in self.epochs if "val_acc" in e]
        return max(scored, key=lambda e: e["val_acc"]) if scored else {}


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
            shown = {k: f"{float(metrics[k]):.4f}" for k in SHOWN if k in metrics}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.close()
            self.bar = None


class FreezeBackbone(L.Callback):
    """Train only the head for the first `epochs` epochs (all of them when epochs == 0).

    While frozen the backbone is also in eval mode (`set_backbone_trainable`), so its BatchNorm
    statistics stay as loaded. Lightning 2.6 sets no module's mode when an epoch starts, and its
    validation loop gives every module back the mode it found it in, so setting it when the fit
    starts (a resumed run starts mid-schedule) and when each epoch starts holds for the epoch.
    """

    def __init__(self, epochs: int, max_epochs: int):
        self.until = epochs if epochs > 0 else max_epochs

    def _apply(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        frozen = trainer.current_epoch < self.until
        set_backbone_trainable(module.network, trainable=not frozen)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._apply(trainer, module)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._apply(trainer, module)
        if trainer.current_epoch == self.until and trainer.is_global_zero:
            print(f"train: epoch {self.until}: backbone unfrozen, fine-tuning every layer")


class GlobalRandomState(L.Callback):
    """Saves torch's global random state in every checkpoint and restores it on resume.

    Dropout draws from it (augmentation and shuffling have their own seeded generators), so a
    run resumed from a checkpoint continues the very random stream an uninterrupted run would
    have: on the CPU the resumed and the uninterrupted run give the same model.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"torch_cpu": torch.get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch_cpu" in state_dict:
            torch.set_rng_state(state_dict["torch_cpu"])
