"""train: fit the configured network on the packed train split with PyTorch Lightning.

Run on its own with ``python -m tasks.train`` (after split).

Lightning picks the GPU when there is one (`train.accelerator: auto`). The weights of the epoch
with the best validation accuracy are exported to `models/model.safetensors` with
`models/model.json`; `reports/train.json` records the best epoch, train/val accuracy and the gap.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks.config import Params, load_params_or_exit
from tasks.io import read_json, write_json
from tasks.models import MODEL_DIR, normalize, save_model
from tasks.networks import build_network
from tasks.split import PACKED_DIR, load_split

TRAIN_REPORT = Path("reports/train.json")


class PackedDataModule(L.LightningDataModule):
    """Train/val/test loaders over the packed uint8 arrays, normalized once in memory."""

    def __init__(self, packed_dir: Path, batch_size: int, seed: int):
        super().__init__()
        self.packed_dir, self.batch_size, self.seed = packed_dir, batch_size, seed
        self.meta = read_json(packed_dir / "meta.json")
        self.datasets: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for name in ("train", "val", "test"):
            if name not in self.datasets:
                images, labels = load_split(name, self.packed_dir)
                tensor = normalize(images, self.meta["mean"], self.meta["std"])
                self.datasets[name] = TensorDataset(tensor, torch.as_tensor(labels))

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.datasets[name], batch_size=self.batch_size, shuffle=shuffle, generator=generator
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class Classifier(L.LightningModule):
    """One shared step for train/val/test; one accuracy metric object per split."""

    def __init__(self, network: nn.Module, num_classes: int, params: Params, steps_per_epoch: int):
        super().__init__()
        self.network = network
        self.train_params = params.train
        self.steps_per_epoch = steps_per_epoch
        self.loss = nn.CrossEntropyLoss()
        self.accuracy = nn.ModuleDict(
            {
                f"{split}_acc": torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
                for split in ("train", "val", "test")
            }
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.loss(logits, labels)
        accuracy = self.accuracy[f"{split}_acc"]
        accuracy(logits, labels)
        self.log(f"{split}_loss", loss, on_step=False, on_epoch=True, prog_bar=split != "test")
        self.log(f"{split}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_index: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_index: int) -> None:
        self._shared_step(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.train_params.lr, weight_decay=self.train_params.weight_decay
        )
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=self.train_params.lr,
            epochs=self.train_params.max_epochs,
            steps_per_epoch=self.steps_per_epoch,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class KeepBest(L.Callback):
    """Keep (in memory) the weights and metrics of the epoch with the best validation accuracy."""

    def __init__(self) -> None:
        self.best: dict[str, Any] = {"val_acc": -1.0}
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # runs after the epoch's validation loop, so train and val metrics are both current
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        key = (metrics.get("val_acc", 0.0), -metrics.get("val_loss", np.inf))
        if key > (self.best["val_acc"], -self.best.get("val_loss", np.inf)):
            self.best = {"epoch": trainer.current_epoch, **metrics}
            self.state = copy.deepcopy(module.network.state_dict())


def train(params: Params, packed_dir: Path = PACKED_DIR, out: Path = MODEL_DIR) -> dict[str, Any]:
    """Train, export the best weights and return the training report."""
    L.seed_everything(params.seed, workers=True, verbose=False)
    data = PackedDataModule(packed_dir, params.train.batch_size, params.seed)
    data.setup()
    meta = data.meta
    network = build_network(
        params.model.arch,
        meta["channels"],
        len(meta["classes"]),
        params.model.width,
        params.model.dropout,
    )
    steps_per_epoch = -(-len(data.datasets["train"]) // params.train.batch_size)
    module = Classifier(network, len(meta["classes"]), params, steps_per_epoch)
    keep_best = KeepBest()
    trainer = L.Trainer(
        max_epochs=params.train.max_epochs,
        accelerator=params.train.accelerator,
        devices=params.train.devices,
        precision=params.train.precision,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[keep_best],
        log_every_n_steps=max(1, steps_per_epoch),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, datamodule=data)
    if keep_best.state is not None:
        network.load_state_dict(keep_best.state)
    save_model(network, meta, params, out)
    best = keep_best.best
    report = {
        "best_epoch": int(best.get("epoch", -1)),
        "epochs_run": int(trainer.current_epoch),
        "train_acc": best.get("train_acc"),
        "val_acc": best.get("val_acc"),
        "train_val_gap": (best.get("train_acc") or 0.0) - (best.get("val_acc") or 0.0),
        "device": str(trainer.strategy.root_device),
    }
    write_json(TRAIN_REPORT, report)
    return report


def main() -> None:
    params = load_params_or_exit()
    report = train(params)
    print(
        f"train: best epoch {report['best_epoch']} val accuracy {report['val_acc']:.4f} "
        f"(train {report['train_acc']:.4f}) on {report['device']} -> {MODEL_DIR}/model.safetensors",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
