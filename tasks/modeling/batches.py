"""Batches cut by index from in-memory uint8 arrays, and the Lightning data module over them."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch

from tasks.data.packed import Arrays

# The shuffle of epoch e uses seed * SHUFFLE_SEED_STRIDE + e: a distinct, reproducible order per
# (seed, epoch) for the first 7919 epochs of a run (a prime, so seeds do not share orders).
SHUFFLE_SEED_STRIDE = 7919


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
            seed = self.seed * SHUFFLE_SEED_STRIDE + self.epoch
            generator = torch.Generator().manual_seed(seed)
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

    def __init__(self, arrays: Arrays, batch_size: int, seed: int):
        super().__init__()
        self.tensors = {
            name: (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y).long())
            for name, (x, y) in arrays.splits().items()
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
