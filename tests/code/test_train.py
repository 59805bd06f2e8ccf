"""Training: transfer learning, pretrained-weight errors, batches, CV, clipping, GPU.

DDP over two processes and resuming after kill -9 are in tests/system/test_train_pipeline.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from tasks.core.config import Params, load_params
from tasks.core.errors import UserError
from tasks.data.packed import Arrays, PackedMeta
from tasks.modeling.batches import PackedBatches
from tasks.modeling.fit import cross_validate, fit_once, make_network, preprocessing_for
from tasks.modeling.module import Classifier
from tasks.modeling.networks import build_network
from tasks.modeling.pretrained import PretrainedMismatch, read_state_dict
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


def test_frozen_backbone_stays_frozen(tmp_path: Path) -> None:
    weights = _resnet18_weights(tmp_path)
    params = _params(
        model={"arch": "resnet18", "pretrained": str(weights), "freeze_backbone": True},
        train={"max_epochs": 1, "finetune_epochs": 0, "accelerator": "cpu"},
    )
    trained, _history = fit_once(params, _toy_arrays(32), META)
    source = read_state_dict(str(weights))
    assert torch.equal(
        trained.state_dict()["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"]
    )


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


def test_cross_validation_reports_every_fold(tmp_path: Path) -> None:
    """Reads nothing from disk (it also runs inside Ray trials, in their own folders)."""
    toy = _toy_arrays(48)
    images, labels = toy.train
    folds = np.arange(48 + 16) % 3
    arrays = Arrays(
        train=(np.concatenate([images, images]), np.concatenate([labels, labels])),
        val=toy.val,
        folds=folds,
    )
    params = _params(
        train={"max_epochs": 1, "cv_folds": 3, "accelerator": "cpu"}, model={"width": 8}
    )
    summary = cross_validate(params, arrays, META)
    assert summary["folds"] == 3 and len(summary["per_fold"]) == 3
    assert 0.0 <= summary["mean"]["val_acc"] <= 1.0 and summary["std"]["val_acc"] >= 0.0
    with pytest.raises(UserError, match=r"folds\.npy"):
        cross_validate(params, dataclasses.replace(arrays, folds=folds[:50]), META)


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
