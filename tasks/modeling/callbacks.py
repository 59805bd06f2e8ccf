"""Lightning callbacks: the per-epoch history, a light progress bar, and the frozen backbone."""

from __future__ import annotations

from typing import Any

import lightning as L
from tqdm import tqdm

from tasks.modeling.networks import set_backbone_trainable

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")


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
