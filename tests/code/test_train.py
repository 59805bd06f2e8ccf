"""Training: transfer learning, pretrained-weight errors, batches, CV, clipping, GPU.

DDP over two processes and resuming after kill -9 are in tests/system/test_train_pipeline.py.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits

from tasks.augment import augment_train
from tasks.core.config import Params, load_params
from tasks.core.errors import UserError
from tasks.core.layout import Layout
from tasks.data.packed import Arrays, PackedMeta
from tasks.evaluate import baseline_accuracy
from tasks.modeling.artifact import load_model, predict
from tasks.modeling.batches import PackedBatches
from tasks.modeling.callbacks import History
from tasks.modeling.fit import (
    cross_validate,
    fit_once,
    fold_arrays,
    make_network,
    preprocessing_for,
    train_reference,
)
from tasks.modeling.module import Classifier
from tasks.modeling.networks import build_network
from tasks.modeling.pretrained import PretrainedMismatch, read_state_dict
from tasks.train import network_weights
from tasks.train import train as train_stage
from tests.conftest import REPO_ROOT

META = PackedMeta.create(
    classes=[str(i) for i in range(4)],
    channels=1,
    image_size=16,
    mean=[0.3],
    std=[0.3],
    counts={"train": 64, "val": 16},
    near_duplicate_pairs_across_splits=0,
)


def _params(**sections: dict) -> Params:
    base = load_params(REPO_ROOT / "params.yaml").model_dump()
    # toy arrays with no augment stage to measure flips (augment.hflip: auto): fixed off
    base["augment"]["hflip"] = False
    for name, values in sections.items():
        base[name] = {**base[name], **values}
    return Params.model_validate(base)


def _toy_arrays(n: int = 64, seed: int = 0) -> Arrays:
    """Four easy classes: a bright square in one of four quadrants."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(n, 1, 16, 16), dtype=np.uint8)
    labels = np.arange(n) % 4
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[index, 0, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] = 220
    return Arrays(train=(images, labels), val=(images[:16], labels[:16]))


def _resnet18_weights(tmp_path: Path) -> Path:
    """A small 'pretrained' checkpoint the test makes itself (torchvision layout, ImageNet head)."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.slow  # a process per stage or a real training: the full suite's tier
def test_resnet18_loads_safetensors_and_fine_tunes(tmp_path: Path) -> None:
    weights = _resnet18_weights(tmp_path)
    params = _params(
        model={"arch": "resnet18", "pretrained": str(weights), "freeze_backbone": True},
        train={"max_epochs": 6, "finetune_epochs": 1, "accelerator": "cpu", "batch_size": 8},
        augment={"online": False},
    )
    network = make_network(params, META)
    source = read_state_dict(str(weights))
    loaded = network.state_dict()
    assert torch.equal(loaded["layer1.0.conv1.weight"], source["layer1.0.conv1.weight"])
    # ImageNet's 3-channel 7x7 stem became a 1-channel 3x3 one; the head is new
    assert loaded["conv1.weight"].shape == (64, 1, 3, 3)
    assert loaded["fc.1.weight"].shape == (4, 512)

    trained, history = fit_once(params, _toy_arrays(), META)
    assert len(history.epochs) == 6
    after = trained.state_dict()
    assert not torch.equal(after["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"]), (
        "the backbone must be fine-tuned after train.finetune_epochs"
    )
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert history.epochs[-1]["val_acc"] > 0.5


class BackboneSnapshots(L.Callback):
    """The backbone's state (every state_dict entry outside the head) before the fit and after
    each epoch, and the head's state before the fit."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}
        self.head_before: dict[str, torch.Tensor] = {}
        self.after_epoch: list[dict[str, torch.Tensor]] = []

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.before = backbone_state(module.network)
        prefix = module.network.head_prefix
        state = module.network.state_dict()
        self.head_before = {k: v.clone() for k, v in state.items() if k.startswith(prefix)}

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.after_epoch.append(backbone_state(module.network))


def backbone_state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer outside the classification head (BatchNorm statistics too)."""
    prefix = network.head_prefix
    return {
        k: v.detach().clone() for k, v in network.state_dict().items() if not k.startswith(prefix)
    }


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    assert before.keys() == after.keys()
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.mark.parametrize("arch", ["cnn", "resnet18"])
def test_linear_probe_changes_no_parameter_or_buffer_of_the_backbone(
    arch: str, tmp_path: Path
) -> None:
    """freeze_backbone with finetune_epochs 0: the backbone is bit-identical after the fit,
    BatchNorm running statistics and batch counters included; only the head learns."""
    pretrained = str(_resnet18_weights(tmp_path)) if arch == "resnet18" else None
    params = _params(
        model={"arch": arch, "width": 8, "pretrained": pretrained, "freeze_backbone": True},
        train={"max_epochs": 2, "finetune_epochs": 0, "accelerator": "cpu", "batch_size": 16},
    )
    snapshots = BackboneSnapshots()
    trained, _history = fit_once(params, _toy_arrays(32), META, extra_callbacks=[snapshots])
    assert any(k.endswith("running_var") for k in snapshots.before)
    assert any(k.endswith("num_batches_tracked") for k in snapshots.before)
    assert changed(snapshots.before, backbone_state(trained)) == []
    head_after = {k: v for k, v in trained.state_dict().items() if k in snapshots.head_before}
    assert changed(snapshots.head_before, head_after), "the head must learn"


def test_backbone_learns_after_finetune_epochs() -> None:
    params = _params(
        model={"width": 8, "freeze_backbone": True},
        train={"max_epochs": 3, "finetune_epochs": 1, "accelerator": "cpu", "batch_size": 16},
    )
    snapshots = BackboneSnapshots()
    trained, _history = fit_once(params, _toy_arrays(32), META, extra_callbacks=[snapshots])
    after_frozen_epoch, final = snapshots.after_epoch[0], backbone_state(trained)
    assert changed(snapshots.before, after_frozen_epoch) == [], "frozen for the first epoch"
    moved = changed(after_frozen_epoch, final)
    assert "features.0.0.weight" in moved and "features.0.1.running_mean" in moved
    assert "features.0.1.num_batches_tracked" in moved


def test_mismatched_weights_name_the_layers(tmp_path: Path) -> None:
    state = torchvision.models.resnet34(weights=None).state_dict()
    path = tmp_path / "resnet34.pt"
    torch.save(state, path)
    params = _params(model={"arch": "resnet18", "pretrained": str(path)})
    with pytest.raises(PretrainedMismatch) as caught:
        make_network(params, META)
    message = str(caught.value)
    assert "does not fit this architecture" in message
    assert "unexpected: layer1.2." in message  # resnet34 has a third block in layer1


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(1), "payload": Path("/")}, path)  # not weights-only
    with pytest.raises(PretrainedMismatch, match="weights_only"):
        read_state_dict(str(path))


def test_missing_pretrained_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PretrainedMismatch, match=r"nothing-here\.safetensors"):
        read_state_dict(str(tmp_path / "nothing-here.safetensors"))


def test_packed_batches_shard_disjointly_and_cover_every_image() -> None:
    images = torch.arange(10).view(10, 1, 1, 1).to(torch.uint8)
    labels = torch.arange(10)
    seen = []
    for rank in range(2):
        shard = PackedBatches(images, labels, 3, shuffle=True, seed=0, rank=rank, world_size=2)
        shard.set_epoch(4)
        seen.append(torch.cat([y for _x, y in shard]).tolist())
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(10))
    again = PackedBatches(images, labels, 3, shuffle=True, seed=0)
    again.set_epoch(5)
    first = torch.cat([y for _x, y in again]).tolist()
    again.set_epoch(6)
    assert first != torch.cat([y for _x, y in again]).tolist(), "each epoch reshuffles"


def test_best_epoch_is_the_first_with_the_highest_val_acc() -> None:
    """The rule of the exported checkpoint (ModelCheckpoint(monitor="val_acc", mode="max") keeps
    its best unless a later epoch is strictly better): a tie with a lower loss does not win."""
    history = History()
    history.epochs = [
        {"epoch": 1, "val_acc": 0.90, "val_loss": 0.50},
        {"epoch": 2, "val_acc": 0.95, "val_loss": 0.30},
        {"epoch": 3, "val_acc": 0.95, "val_loss": 0.10},
        {"epoch": 4, "val_acc": 0.94, "val_loss": 0.05},
    ]
    assert history.best()["epoch"] == 2


def _accuracy(network: torch.nn.Module, meta: PackedMeta, split: tuple) -> float:
    images, labels = split
    probabilities = predict(network.eval(), preprocessing_for(meta), images)
    return float((probabilities.argmax(1) == labels).mean())


def test_train_accuracy_is_measured_in_eval_mode_on_unaugmented_train_images() -> None:
    """train_acc: the model after the epoch, in eval mode, on un-augmented train images (at most
    as many as val holds); the training batches' figure is train_acc_augmented."""
    toy = _toy_arrays(64)
    images, labels = toy.train
    blank = np.zeros_like(images)  # "augmented copies" no model can classify
    arrays = Arrays(
        train=(np.concatenate([images, blank]), np.concatenate([labels, labels])), val=toy.val
    )
    params = _params(
        model={"width": 8, "dropout": 0.5},
        train={"max_epochs": 3, "accelerator": "cpu", "batch_size": 16},
    )
    network, history = fit_once(params, arrays, META)  # META: 64 packed train originals
    reference = train_reference(arrays, 64, params.seed)
    assert len(reference[1]) == len(toy.val[1])
    is_original = (reference[0][:, None] == images[None]).all(axis=(2, 3, 4)).any(axis=1)
    assert is_original.all(), "the reference holds only un-augmented originals"
    last = history.epochs[-1]
    assert last["train_acc"] == pytest.approx(_accuracy(network, META, reference), abs=1e-6)
    assert "train_acc_augmented" in last and "train_loss_augmented" in last
    assert last["train_acc"] > last["train_acc_augmented"]


def _write_packed(layout: Layout, arrays: Arrays, meta: PackedMeta) -> None:
    layout.packed_dir.mkdir(parents=True)
    for name, (images, labels) in arrays.splits().items():
        np.save(layout.packed_dir / f"{name}_x.npy", images)
        np.save(layout.packed_dir / f"{name}_y.npy", labels)
    meta.save(layout.packed_meta)


def test_reported_best_epoch_is_the_exported_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The train stage on a task where val accuracy ties at its maximum: reports/train.json's
    best epoch is the epoch of the weights in models/model.safetensors, and its train accuracy
    is that model's, in eval mode, on the un-augmented train reference. last.ckpt, the resume
    point, holds the last epoch, though it did not improve val accuracy."""
    layout = Layout(tmp_path)
    arrays = Arrays(
        train=_toy_arrays(128, seed=1).train,
        val=_toy_arrays(32, seed=2).train,
        test=_toy_arrays(32, seed=3).train,
    )
    meta = META.model_copy(update={"counts": {"train": 128, "val": 32, "test": 32}})
    _write_packed(layout, arrays, meta)
    monkeypatch.chdir(tmp_path)
    params = _params(
        model={"width": 8},
        train={"max_epochs": 8, "accelerator": "cpu", "batch_size": 16, "patience": 100},
    )
    report = train_stage(params, layout)
    assert report is not None

    # every epoch's val accuracy, as dvclive recorded it (one row per epoch, the step the epoch)
    rows = (layout.dvclive_dir / "plots" / "metrics" / "val" / "acc.tsv").read_text()
    accuracies = [float(row["acc"]) for row in csv.DictReader(io.StringIO(rows), delimiter="\t")]
    assert len(accuracies) == 8
    tied = [epoch for epoch, value in enumerate(accuracies, 1) if value == max(accuracies)]
    assert len(tied) >= 2, f"the test needs a tie at the best val accuracy: {accuracies}"
    best_path = layout.checkpoint_dir / "best.ckpt"
    # a checkpoint's `epoch` counts from 0; every epoch the user sees, from 1
    exported_epoch = torch.load(best_path, map_location="cpu", weights_only=True)["epoch"] + 1
    assert report["best_epoch"] == exported_epoch == tied[0]
    assert report["exported_epoch"] == exported_epoch
    exported = load_file(str(layout.models_dir / "model.safetensors"))
    best_weights = network_weights(str(best_path))
    assert exported.keys() == best_weights.keys()
    assert all(torch.equal(exported[k], best_weights[k]) for k in exported)
    last = torch.load(layout.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 7, "last.ckpt (the resume point) is written after every epoch"

    network, _card = load_model(layout.models_dir)
    reference = train_reference(arrays, 128, params.seed)
    assert report["train_reference_images"] == len(reference[1]) == 32
    assert report["train_acc"] == pytest.approx(_accuracy(network, meta, reference), abs=1e-6)
    assert report["train_val_gap"] == pytest.approx(report["train_acc"] - report["val_acc"])
    assert report["train_acc_augmented"] is not None


def _identified_arrays(n_train: int = 12, n_val: int = 6, copies: int = 2) -> Arrays:
    """Images that say who they are: pixel (0, 0) holds the pool index (train originals, then
    val images), pixel (0, 1) the copy number (0: the original); three folds, shuffled."""
    pool = n_train + n_val
    images = np.zeros((pool, 1, 16, 16), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(pool)
    labels = np.arange(pool) % 4
    train_images = [images[:n_train]]
    for copy in range(1, copies + 1):
        copied = images[:n_train].copy()
        copied[:, 0, 0, 1] = copy
        train_images.append(copied)
    return Arrays(
        train=(np.concatenate(train_images), np.tile(labels[:n_train], copies + 1)),
        val=(images[n_train:], labels[n_train:]),
        folds=np.random.default_rng(0).permutation(np.arange(pool) % 3),
    )


def assert_pure(arrays: Arrays, fold: int, trained: Arrays, originals: int) -> None:
    """`trained` (what fold `fold` fits on) holds out the fold's images and every copy of them."""
    n_train = len(arrays.folds) - len(arrays.val[1])
    copies = len(arrays.train[1]) // n_train - 1
    held_out = set(np.flatnonzero(arrays.folds == fold).tolist())
    kept = sorted(set(range(len(arrays.folds))) - held_out)
    val_ids, val_copy = trained.val[0][:, 0, 0, 0], trained.val[0][:, 0, 0, 1]
    assert sorted(val_ids.tolist()) == sorted(held_out) and not val_copy.any()
    train_ids, train_copy = trained.train[0][:, 0, 0, 0], trained.train[0][:, 0, 0, 1]
    assert not held_out & set(train_ids.tolist()), "a held-out image or its copy trains"
    assert sorted(train_ids[:originals].tolist()) == kept and not train_copy[:originals].any()
    trained_copies = sorted(
        zip(train_ids[originals:].tolist(), train_copy[originals:].tolist(), strict=True)
    )
    expected = sorted((i, c) for i in kept if i < n_train for c in range(1, copies + 1))
    assert trained_copies == expected, "every copy of a kept train original, and only those"
    assert (trained.train[1] == train_ids % 4).all() and (trained.val[1] == val_ids % 4).all()


def test_folds_hold_out_each_image_with_its_augmented_copies() -> None:
    arrays = _identified_arrays()
    for fold in range(3):
        trained, originals = fold_arrays(arrays, fold)
        assert_pure(arrays, fold, trained, originals)
    with pytest.raises(UserError, match=r"folds\.npy"):
        fold_arrays(dataclasses.replace(arrays, folds=arrays.folds[:-1]), 0)


def test_cross_validation_fits_each_fold_on_its_pure_arrays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reads nothing from disk (it also runs inside Ray trials, in their own folders)."""
    arrays = _identified_arrays()
    fitted: list[tuple[Arrays, int]] = []

    def recording_fit(params: Params, fold: Arrays, meta: PackedMeta, **kwargs: Any) -> Any:
        fitted.append((fold, kwargs["originals"]))
        return fit_once(params, fold, meta, **kwargs)

    monkeypatch.setattr("tasks.modeling.fit.fit_once", recording_fit)
    params = _params(
        train={"max_epochs": 1, "cv_folds": 3, "accelerator": "cpu"}, model={"width": 8}
    )
    summary = cross_validate(params, arrays, META)
    assert summary["folds"] == 3 and [r["fold"] for r in summary["per_fold"]] == [0, 1, 2]
    assert len(fitted) == 3
    for fold, (trained, originals) in enumerate(fitted):
        assert_pure(arrays, fold, trained, originals)


def _digits(per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` bundled 8x8 digits of each class as 16x16 uint8 images (pixels
    doubled, as the pipeline packs them at data.image_size 16), in a seeded shuffled order."""
    digits = load_digits()
    chosen = np.concatenate([np.flatnonzero(digits.target == c)[:per_class] for c in range(10)])
    chosen = np.random.default_rng(0).permutation(chosen)
    images = (digits.images[chosen] * (255 / 16)).round().astype(np.uint8)
    return images.repeat(2, axis=1).repeat(2, axis=2)[:, None], digits.target[chosen]


@pytest.mark.slow
def test_cross_validation_beats_a_logistic_regression_on_the_digits() -> None:
    """3-fold CV over 300 real digits, each train image with an augmented copy: the folds' mean
    accuracy (cv.json's) is above a logistic regression's on the same pixels and folds (0.97
    for the regression, 0.997 for the CNN when this test was written)."""
    images, labels = _digits(30)
    n_val = len(labels) // 5
    params = _params(
        model={"width": 16},
        train={
            "max_epochs": 10,
            "lr": 0.01,  # with the one-cycle schedule: converged within the 10 epochs
            "schedule": "onecycle",
            "cv_folds": 3,
            "accelerator": "cpu",
            "batch_size": 32,
        },
        augment={"copies": 1, "online": False},
    )
    train_split = augment_train(images[n_val:], labels[n_val:], params.augment, params.seed)
    arrays = Arrays(
        train=train_split,
        val=(images[:n_val], labels[:n_val]),
        folds=np.arange(len(labels)) % 3,
    )
    scaled = images[n_val:] / 255.0
    meta = PackedMeta.create(
        classes=[str(c) for c in range(10)],
        channels=1,
        image_size=16,
        mean=[float(scaled.mean())],
        std=[float(scaled.std())],
        counts={"train": len(labels) - n_val, "val": n_val},
        near_duplicate_pairs_across_splits=0,
    )
    summary = cross_validate(params, arrays, meta)
    # the baseline's folds come from the test's own bookkeeping, not from fold_arrays: the pool
    # is the train originals, then the val images, in arrays.folds' order
    pool_x = np.concatenate([images[n_val:], images[:n_val]])
    pool_y = np.concatenate([labels[n_val:], labels[:n_val]])
    baseline = []
    for fold in range(3):
        kept, held_out = arrays.folds != fold, arrays.folds == fold
        train_part = (pool_x[kept], pool_y[kept])
        held_out_part = (pool_x[held_out], pool_y[held_out])
        baseline.append(baseline_accuracy(params.evaluate, params.seed, train_part, held_out_part))
    assert summary["folds"] == 3
    assert summary["mean"]["val_acc"] > np.mean(baseline) > 0.9, (summary["per_fold"], baseline)


def test_fused_optimizer_gradients_are_clipped() -> None:
    """On a GPU AdamW runs fused, which Lightning's mixed-precision plugin refuses to clip."""
    params = _params(model={"width": 8})
    module = Classifier(make_network(params, META), preprocessing_for(META), 4, params)
    for parameter in module.parameters():
        parameter.grad = torch.full_like(parameter, 10.0)
    fused = torch.optim.AdamW(module.parameters(), fused=True)  # fused AdamW runs on CPU too
    module.configure_gradient_clipping(fused, 0.5)
    grads = [p.grad for p in module.parameters()]
    assert float(torch.nn.utils.get_total_norm(grads)) == pytest.approx(0.5, rel=1e-4)


def test_ddp_shards_have_equal_batch_counts() -> None:
    """DDP ranks must run the same number of steps, or the ranks wait for each other forever."""
    images = torch.arange(11).view(11, 1, 1, 1).to(torch.uint8)
    labels = torch.arange(11)
    for batch_size in (1, 2, 3, 5):
        shards = [
            PackedBatches(images, labels, batch_size, shuffle, seed=0, rank=rank, world_size=2)
            for rank in range(2)
            for shuffle in (True, False)
        ]
        batches = [list(shard) for shard in shards]
        assert len({len(b) for b in batches}) == 1, batch_size
        assert {len(shard) for shard in shards} == {len(batches[0])}, "len() matches iteration"
    ranks = [PackedBatches(images, labels, 4, True, 0, rank, 2) for rank in range(2)]
    seen = [torch.cat([y for _x, y in shard]).tolist() for shard in ranks]
    assert sorted(set(seen[0]) | set(seen[1])) == list(range(11)), "every image is seen"


def test_v1_weights_without_batchnorm_counters_load(tmp_path: Path) -> None:
    """torchvision's V1 ImageNet state dicts have no `num_batches_tracked` entries."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    state = {k: v.contiguous() for k, v in state.items() if "num_batches_tracked" not in k}
    path = tmp_path / "resnet18_v1.pt"
    torch.save(state, path)
    params = _params(model={"arch": "resnet18", "pretrained": str(path)})
    loaded = make_network(params, META).state_dict()
    assert torch.equal(loaded["layer2.0.bn1.running_var"], state["layer2.0.bn1.running_var"])


def test_network_output_shapes_for_each_arch() -> None:
    for arch in ("cnn", "resnet18", "resnet34", "resnet50"):
        network = build_network(arch, 3, 7, 8, 0.1, 32).eval()
        assert network(torch.zeros(2, 3, 32, 32)).shape == (2, 7), arch


@pytest.mark.gpu  # skipped without a CUDA GPU (tests/conftest.py)
def test_bf16_mixed_precision_on_gpu() -> None:
    params = _params(
        train={"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed", "max_epochs": 3}
    )
    _network, history = fit_once(params, _toy_arrays(256), META)
    assert history.epochs[-1]["train_acc"] > 0.9
