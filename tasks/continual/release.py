"""The challenger as the registry keeps a model: weights, card, ONNX fp32 and int8, and an entry.

Exported by the compress stage's own code (`tasks.compression.compressor.compress_model`: the
same export, the same checks of fp32 probabilities and embeddings against torch within
`compress.atol`, int8 calibrated on `compress.calibration_images` seeded images of what it
trained on, served only if within `compress.max_accuracy_drop` of torch on its test set). Its
entry's `test_set` says what its accuracy was measured on. Registered through
`record_decision` like the promote stage's candidates, with its lineage: parent = the champion,
data_version = the batch's version, and `lineage` (kind continual, batch, source, counts). Its
registered test set is the old test split followed by the batch's test part, so the models that
come after it are judged on both.

The release order (:func:`release`), all under the registry lock (`tasks.registry.lock`):

1. re-read the registry: if the champion is no longer the one the challenger was fine-tuned
   from and compared with (a promote or another continual run won in the meantime), the
   challenger is recorded as rejected, saying so, and the run asks to be run again
   (``retry`` in its report): a model is never promoted over one it was not compared with;
2. copy the challenger's files into the registry (a folder no registry.json lists yet);
3. when the gate promoted it: build its bento and validate it served (`tasks.packaging.bento`);
   if that fails, the challenger is recorded as rejected with the bento's error, the BentoML
   store's ``latest`` model is set back to the champion, and the report says to run again (a
   rerun of the same batch learns again instead of returning the earlier report);
4. save registry.json: the one commit point. A kill before it leaves the old registry and a
   folder that ``python -m tasks.registry --verify`` names as garbage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from tasks.compression.compressor import compress_model
from tasks.compression.report import ServedName
from tasks.core.config import Params
from tasks.core.errors import UserError
from tasks.core.layout import Layout
from tasks.data.packed import Split
from tasks.modeling.artifact import CARD_FILE, WEIGHTS_FILE, ModelCard, save_model
from tasks.packaging.bento import package
from tasks.registry.lock import registry_lock
from tasks.registry.store import (
    SERVED_FILES,
    Candidate,
    Lineage,
    Registry,
    candidate_id,
    continual_test_set,
    files_of,
    load_registry,
    record_decision,
    save_registry,
    store_files,
)
from tasks.serving.store import save_champion


def export_challenger(
    network: nn.Module,
    card: ModelCard,
    folder: Path,
    train_images: np.ndarray,
    test: Split,
    params: Params,
) -> tuple[ServedName, str]:
    """Write the weights, card and both ONNX files into `folder`; which one is served, and why
    (`compress_model`, as the compress stage: UserError when ONNX and torch disagree)."""
    save_model(network, card, folder)
    result = compress_model(
        network,
        card,
        folder / WEIGHTS_FILE,
        folder / "onnx",
        test,
        train_images,
        params.compress,
        params.seed,
    )
    return result.served, result.reason


@dataclass(frozen=True)
class Released:
    """What :func:`release` did: the registry after it, the challenger's entry, the decision
    as recorded, the bento (package report) or its error, and why a rerun must learn again."""

    registry: Registry
    candidate: Candidate
    promoted: bool
    reasons: list[str]
    package: dict[str, Any] | None
    bento_error: str | None
    retry: str | None


def new_entry(
    registry_dir: Path,
    folder: Path,
    entry: tuple[ServedName, Split, dict[str, float]],
    parent: str,
    lineage: Lineage,
    time: str,
) -> Candidate:
    """The registry entry of the challenger in `folder`, its files copied into the registry.

    `entry`: the served format, the registered test set (old test split + the batch's test
    part) and the accuracies the report shows (`accuracy` is the one on that whole set).
    """
    served, test_set, metrics = entry
    identity = candidate_id(folder / WEIGHTS_FILE, folder / CARD_FILE)
    card = ModelCard.load(folder / CARD_FILE)
    return Candidate(
        id=identity,
        created=time,
        files=store_files(registry_dir, identity, folder, folder / "onnx", test_set),
        served_format=served,
        served_file=f"onnx/{SERVED_FILES[served]}",
        accuracy=metrics["accuracy"],
        test_metrics=metrics,
        baseline=None,
        data_version=lineage.batch,
        test_images=len(test_set[1]),
        params_hash=card.params_fingerprint,
        parent=parent,
        status="rejected",
        reasons=[],
        lineage=lineage,
        test_set=continual_test_set(parent, lineage.batch),
    )


def release(
    folder: Path,
    layout: Layout,
    entry: tuple[ServedName, Split, dict[str, float]],
    lineage: Lineage,
    decision: tuple[str, bool, list[str]],
    params: Params,
    time: str,
) -> Released:
    """Record the gate's decision about the challenger in `folder`, holding the registry lock,
    in the order the module docstring gives. `decision`: the champion it was fine-tuned from
    and compared with (its parent), whether the gate promoted it, and the gate's reasons."""
    parent, promoted, reasons = decision
    registry_dir = layout.registry_dir
    with registry_lock(registry_dir, f"continual learning (batch {lineage.batch})"):
        registry = load_registry(registry_dir)
        identity = candidate_id(folder / WEIGHTS_FILE, folder / CARD_FILE)
        candidate = registry.entry(identity) or new_entry(
            registry_dir, folder, entry, parent, lineage, time
        )
        retry = bento = bento_error = None
        if registry.champion != parent:
            now_champion = registry.champion or "none"
            retry = (
                f"the champion changed from {parent} to {now_champion} while {identity} was "
                f"fine-tuned from {parent}; it was never compared with {now_champion}, so it is "
                f"recorded as rejected: run continual learning on batch {lineage.batch} again"
            )
            promoted, reasons = False, [f"not compared with the champion: {retry}", *reasons]
        elif promoted:
            try:
                bento = package(params, layout, files_of(registry_dir, candidate))
            except UserError as error:
                bento_error = (
                    f"the gate promoted {identity}, but its bento failed: {error}; the champion "
                    f"is still {parent}: run continual learning on batch {lineage.batch} again"
                )
                promoted, reasons, retry = False, [bento_error, *reasons], bento_error
                restore_served(layout)
        updated = record_decision(registry, candidate, promoted, reasons, time)
        if updated != registry:
            save_registry(updated, registry_dir)  # the commit point
    return Released(updated, candidate, promoted, reasons, bento, bento_error, retry)


def restore_served(layout: Layout) -> None:
    """Make the champion the BentoML store's latest model again, after the challenger's bento
    failed (packaging saved the challenger first); a store that cannot be written is left."""
    with contextlib.suppress(UserError):  # the bento's error already says what is wrong
        save_champion(layout)
