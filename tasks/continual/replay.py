"""The replay pool: the old train split without any image of a registered test set.

Replay draws old train images (`data/packed`) to fine-tune on beside the batch. After a re-split
(another seed, other fractions, new data) some images of a registered model's test set can be in
today's train split: replaying them would let the challenger learn images that its own forgetting
rule, and every later comparison on its registered test set (the old test set + the batch's test
part), score it on. So every image of every registry entry's `test.npz` (champion, retired and
rejected alike) is taken out of the pool before the sample is drawn:

- exact: the same image array bytes (a set of the bytes, as the promote stage's `unseen`);
- near: perceptual hashes within `data.near_duplicate_distance` bits (`tasks.data.leakage`, as
  the split stage and the batch's leakage check define a near duplicate; 0: the same hash).

Both are counted (:attr:`ReplayPool.excluded`) and written to the continual report as
``replay_excluded``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.continual.batch import near_any
from tasks.core.errors import shown
from tasks.data.leakage import perceptual_hashes
from tasks.data.packed import Split
from tasks.registry.store import TEST_SET, RegistryError, files_of, load_registry, load_test_set


@dataclass(frozen=True)
class ReplayPool:
    """The old train images replay may draw from, and how many were taken out, and why."""

    split: Split
    exact: int  # byte-identical to an image of a registered test set
    near: int  # not identical, but within data.near_duplicate_distance by perceptual hash
    test_sets: int  # distinct registered test sets compared with

    @property
    def excluded(self) -> dict[str, int]:
        return {"exact": self.exact, "near": self.near, "test_sets": self.test_sets}


def registered_test_images(registry_dir: Path) -> list[np.ndarray]:
    """The images of every registry entry's test set, each distinct file (by sha256) once."""
    registry = load_registry(registry_dir)
    seen: set[str] = set()
    images = []
    for entry in registry.candidates:
        stored = entry.files.get(TEST_SET)
        if stored is None or stored.sha256 in seen:
            continue
        seen.add(stored.sha256)
        path = files_of(registry_dir, entry).test_set
        if not path.is_file():
            raise RegistryError(
                f"{shown(path)} is missing, so replay cannot leave its images out; run "
                "`python -m tasks.registry --verify`"
            )
        images.append(load_test_set(path)[0])
    return images


def replay_pool(train: Split, test_sets: list[np.ndarray], max_distance: int) -> ReplayPool:
    """`train` without the images of `test_sets` (exact bytes first, then near duplicates)."""
    images, labels = train
    if not test_sets or len(labels) == 0:
        return ReplayPool(train, 0, 0, len(test_sets))
    registered = {image.tobytes() for test in test_sets for image in test}
    exact = np.array([image.tobytes() in registered for image in images], dtype=bool)
    test_hashes = np.concatenate([perceptual_hashes(test) for test in test_sets])
    near = np.zeros(len(labels), dtype=bool)
    candidates = np.flatnonzero(~exact)
    near[candidates] = near_any(perceptual_hashes(images[candidates]), test_hashes, max_distance)
    keep = ~(exact | near)
    return ReplayPool(
        (images[keep], labels[keep]), int(exact.sum()), int(near.sum()), len(test_sets)
    )
