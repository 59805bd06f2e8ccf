"""The model registry and the promotion gate, on tiny models made here (no training).

A synthetic repository: a random 8 px test split whose labels are what model A predicts, so A
scores 1.0 and a freshly initialised model B scores about chance; the real promote function
runs on it in-process.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tasks.core.config import Params, load_params, with_overrides
from tasks.core.errors import MissingInput, UserError
from tasks.core.io import write_json
from tasks.core.layout import Layout
from tasks.modeling.artifact import load_model, predict
from tasks.promote import promote
from tasks.registry.__main__ import table
from tasks.registry.gate import (
    accuracy_rule,
    decide,
    regression_rule,
    same_inputs_rule,
    unseen,
)
from tasks.registry.store import (
    Candidate,
    Lineage,
    RegistryError,
    candidate_id,
    champion,
    continual_test_set,
    integrity_problems,
    load_registry,
    load_test_set,
    record_decision,
    save_registry,
    save_test_set,
    store_files,
)
from tests.conftest import REPO_ROOT
from tests.models import save_tiny_meta, save_tiny_model

CLASSES = ["a", "b", "c"]
# everything but the comparison with the champion is switched off: the tiny models are untrained
LENIENT = {
    "gate.min_accuracy": 0.0,
    "gate.min_invariance": 0.0,
    "gate.min_class_accuracy": 0.0,
    "gate.require_beats_baseline": False,
}


def gate_params(**overrides: float | bool) -> Params:
    return with_overrides(load_params(REPO_ROOT / "params.yaml"), {**LENIENT, **overrides})


def write_model(layout: Layout, seed: int) -> None:
    """A freshly initialised width-4 CNN for 1x8x8 images, and its card, into models/."""
    save_tiny_model(layout.models_dir, seed, CLASSES, image_size=8, fingerprint=f"params-{seed}")


def write_reports(layout: Layout) -> None:
    """metrics.json (the model's real test accuracy) and compress.json, as upstream writes them."""
    network, card = load_model(layout.models_dir)
    images, labels = (
        np.load(layout.packed_dir / "test_x.npy"),
        np.load(layout.packed_dir / "test_y.npy"),
    )
    accuracy = float((predict(network, card.preprocessing(), images).argmax(1) == labels).mean())
    write_json(
        layout.metrics_file,
        {"test": {"accuracy": accuracy}, "baseline": {"name": "lr", "accuracy": 0.0}},
    )
    write_json(layout.compress_report, {"models": {}, "served": "onnx_int8", "reason": "test"})


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """A repository holding model A (seed 0), a test split labelled by A, ONNX stand-ins."""
    layout = Layout(tmp_path)
    layout.params_file.write_text((REPO_ROOT / "params.yaml").read_text())
    layout.packed_dir.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, size=(60, 1, 8, 8), dtype=np.uint8)
    write_model(layout, seed=0)
    network, card = load_model(layout.models_dir)
    labels = predict(network, card.preprocessing(), images).argmax(1)
    np.save(layout.packed_dir / "test_x.npy", images)
    np.save(layout.packed_dir / "test_y.npy", labels)
    for split, seed in (("train", 1), ("val", 2)):  # other images: what a candidate learned on
        seen = np.random.default_rng(seed).integers(0, 256, size=(20, 1, 8, 8), dtype=np.uint8)
        np.save(layout.packed_dir / f"{split}_x.npy", seen)
        np.save(layout.packed_dir / f"{split}_y.npy", np.zeros(20, dtype=np.int64))
    save_tiny_meta(layout.packed_meta, card, {"test": 60})
    layout.onnx_dir.mkdir(parents=True)
    (layout.onnx_dir / "model.onnx").write_bytes(b"fp32 stand-in")
    (layout.onnx_dir / "model.int8.onnx").write_bytes(b"int8 stand-in")
    write_reports(layout)
    return layout


def registry_bytes(layout: Layout) -> bytes:
    return (layout.registry_dir / "registry.json").read_bytes()


def test_the_first_model_becomes_champion_with_its_files_and_checksums(layout: Layout) -> None:
    report = promote(gate_params(), layout)
    assert report.decision == "promoted" and report.previous_champion is None
    assert any("no champion yet" in reason for reason in report.reasons)
    files = champion(layout.registry_dir)
    entry = files.entry
    assert entry.status == "champion" and entry.parent is None and entry.accuracy == 1.0
    assert files.served_onnx == files.folder / "onnx" / "model.int8.onnx"
    assert (
        files.weights.is_absolute()
        and files.card.read_bytes() == (layout.models_dir / "model.json").read_bytes()
    )
    digest = hashlib.sha256(files.weights.read_bytes()).hexdigest()
    assert entry.files["model.safetensors"].sha256 == digest
    images, labels = load_test_set(files.test_set)
    assert np.array_equal(images, np.load(layout.packed_dir / "test_x.npy")) and len(labels) == 60
    assert integrity_problems(layout.registry_dir) == []
    gate = json.loads(layout.gate_report.read_text())
    assert set(gate) == {
        "decision", "reasons", "candidate", "champion", "previous_champion", "rules"
    }  # fmt: skip
    assert gate["champion"]["id"] == gate["candidate"]["id"] == entry.id
    assert "*" in table(load_registry(layout.registry_dir)).splitlines()[1]


def test_rerunning_on_the_champion_changes_nothing(layout: Layout) -> None:
    first = promote(gate_params(), layout)
    before = registry_bytes(layout)
    again = promote(gate_params(), layout)
    gate_once = layout.gate_report.read_bytes()
    promote(gate_params(), layout)
    assert again.decision == "promoted" and again.reasons[0].startswith("already the champion")
    assert registry_bytes(layout) == before and layout.gate_report.read_bytes() == gate_once
    registry = load_registry(layout.registry_dir)
    assert [c.id for c in registry.candidates] == [first.candidate.id]
    assert [e.kind for e in registry.events] == ["registered", "promoted"]


def test_a_worse_candidate_is_rejected_and_the_champion_kept(layout: Layout) -> None:
    champion_id = promote(gate_params(), layout).candidate.id
    write_model(layout, seed=1)  # untrained: about chance on labels that are A's predictions
    write_reports(layout)
    report = promote(gate_params(**{"gate.max_regression": 0.05}), layout)
    assert report.decision == "rejected"
    assert report.reasons[0].startswith(f"against champion {champion_id} on its 60 test images")
    assert "not shown that the candidate trails by less than" in report.reasons[0]
    assert "difference -" in report.reasons[0]
    registry = load_registry(layout.registry_dir)
    assert registry.champion == champion_id and report.champion.id == champion_id
    rejected = registry.entry(report.candidate.id)
    assert rejected.status == "rejected" and rejected.parent == champion_id
    # the same decision again: nothing recorded twice
    before = registry_bytes(layout)
    promote(gate_params(**{"gate.max_regression": 0.05}), layout)
    assert registry_bytes(layout) == before
    assert integrity_problems(layout.registry_dir) == []


def test_a_rejected_candidate_is_judged_again_and_can_win(layout: Layout) -> None:
    first = promote(gate_params(), layout).candidate.id
    write_model(layout, seed=1)
    write_reports(layout)
    second = promote(gate_params(**{"gate.max_regression": 0.05}), layout).candidate.id
    # the gate is relaxed to allow any regression: the same candidate now replaces the champion
    report = promote(gate_params(**{"gate.max_regression": 1.0}), layout)
    assert report.decision == "promoted" and report.previous_champion.id == first
    registry = load_registry(layout.registry_dir)
    assert registry.champion == second and len(registry.candidates) == 2
    assert registry.entry(first).status == "retired"
    assert [e.kind for e in registry.events] == [
        "registered", "promoted", "registered", "rejected", "retired", "promoted"
    ]  # fmt: skip
    assert integrity_problems(layout.registry_dir) == []


def test_a_changed_or_missing_file_is_found(layout: Layout) -> None:
    promote(gate_params(), layout)
    files = champion(layout.registry_dir)
    files.served_onnx.write_bytes(b"tampered")
    (files.folder / "test.npz").unlink()
    problems = integrity_problems(layout.registry_dir)
    assert any("onnx/model.int8.onnx changed" in p for p in problems)
    assert any("test.npz is missing" in p for p in problems)
    with pytest.raises(RegistryError, match=r"champion .*model\.int8\.onnx changed"):
        champion(layout.registry_dir)
    with pytest.raises(RegistryError):
        promote(gate_params(), layout)  # the stage will not compare against a damaged champion


def test_missing_inputs_and_stale_metrics_stop_the_stage(layout: Layout) -> None:
    layout.compress_report.unlink()
    with pytest.raises(MissingInput, match=r"compress\.json is missing"):
        promote(gate_params(), layout)
    write_reports(layout)
    write_model(layout, seed=1)  # metrics.json is still model A's
    with pytest.raises(UserError, match=r"says test accuracy 1\.0000, but the model"):
        promote(gate_params(), layout)
    with pytest.raises(MissingInput, match="no champion yet"):
        champion(layout.registry_dir)


def test_the_test_set_file_is_byte_stable(tmp_path: Path) -> None:
    images = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    labels = np.array([0, 1])
    save_test_set(tmp_path / "a.npz", images, labels)
    save_test_set(tmp_path / "b.npz", images, labels)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded_images, loaded_labels = load_test_set(tmp_path / "a.npz")
    assert np.array_equal(loaded_images, images) and np.array_equal(loaded_labels, labels)


def test_the_regression_rule_is_a_non_inferiority_test() -> None:
    gate = gate_params(**{"gate.max_regression": 0.01}).gate
    champion_correct = np.ones(500, dtype=bool)
    same = regression_rule(champion_correct, champion_correct, "abc", gate)
    assert same.passed and "difference +0.0000, 0 won and 0 lost of 500" in same.reason
    worse = champion_correct.copy()
    worse[:25] = False  # 5 points worse, far beyond the 1-point margin
    rule = regression_rule(worse, champion_correct, "abc", gate)
    assert not rule.passed and "difference -0.0500" in rule.reason and "not shown" in rule.reason
    slightly = champion_correct.copy()
    slightly[:1] = False  # 0.2 points worse: within the 1-point margin with 95 % confidence
    assert regression_rule(slightly, champion_correct, "abc", gate).passed
    slightly[:3] = False  # 0.6 points: 500 images cannot show it is within 1 point
    assert not regression_rule(slightly, champion_correct, "abc", gate).passed
    passed, reasons = decide([accuracy_rule(worse, 0.9), rule])
    assert not passed and reasons[0] == rule.reason


def test_the_same_decision_leaves_the_registry_object_unchanged(layout: Layout) -> None:
    promote(gate_params(), layout)
    registry = load_registry(layout.registry_dir)
    entry = registry.champion_entry()
    assert record_decision(registry, entry, True, entry.reasons, "later") is registry


def test_champion_test_images_the_candidate_learned_on_are_left_out() -> None:
    test = np.arange(4 * 4, dtype=np.uint8).reshape(4, 1, 2, 2)
    seen = np.concatenate([test[[1, 3]], np.full((2, 1, 2, 2), 255, dtype=np.uint8)])
    assert unseen(test, seen).tolist() == [True, False, True, False]
    config = gate_params().gate
    rule = regression_rule(np.ones(200, bool), np.ones(200, bool), "c", config, left_out=2)
    assert rule.passed and "(2 left out: the candidate trained on them)" in rule.reason
    nothing_left = regression_rule(np.ones(0, bool), np.ones(0, bool), "c", config, left_out=4)
    assert not nothing_left.passed and "all 4 of its test images" in nothing_left.reason


def test_a_retrain_with_the_champions_params_and_data_keeps_the_champion() -> None:
    def entry(identity: str, params_hash: str, data: str) -> Candidate:
        return Candidate(
            id=identity,
            created="2026-01-01T00:00:00+00:00",
            files={},
            served_format="onnx_int8",
            served_file="onnx/model.int8.onnx",
            accuracy=1.0,
            test_metrics={},
            baseline=None,
            data_version=data,
            test_images=1,
            params_hash=params_hash,
            parent=None,
            status="champion",
            reasons=[],
        )

    champion = entry("a", "p", "d")
    assert not same_inputs_rule(entry("b", "p", "d"), champion).passed  # e.g. a GPU retrain
    assert same_inputs_rule(entry("b", "q", "d"), champion).passed  # new params
    assert same_inputs_rule(entry("b", "p", "e"), champion).passed  # new data
    assert same_inputs_rule(entry("b", "p", "d"), None).passed  # no champion yet


def crown_continual_champion(layout: Layout, extra_test: tuple[np.ndarray, np.ndarray]) -> str:
    """Register, as continual learning does, a champion fine-tuned from the current one (here
    with A's weights, so it predicts as A does): its test set is the parent's followed by
    `extra_test`, the batch's test part. Its id."""
    parent = load_registry(layout.registry_dir).champion
    folder = layout.root / "challenger"
    save_tiny_model(folder, 0, CLASSES, image_size=8, fingerprint="continual")
    old_images, old_labels = load_test_set(champion(layout.registry_dir).test_set)
    test_set = (
        np.concatenate([old_images, extra_test[0]]),
        np.concatenate([old_labels, extra_test[1]]),
    )
    identity = candidate_id(folder / "model.safetensors", folder / "model.json")
    lineage = Lineage(
        kind="continual", batch="b1", source="x", train_images=5, test_images=10, replay_images=5
    )
    entry = Candidate(
        id=identity,
        created="2026-01-02T00:00:00+00:00",
        files=store_files(layout.registry_dir, identity, folder, layout.onnx_dir, test_set),
        served_format="onnx_int8",
        served_file="onnx/model.int8.onnx",
        accuracy=1.0,
        test_metrics={},
        baseline=None,
        data_version="b1",
        test_images=len(test_set[1]),
        params_hash="continual",
        parent=parent,
        status="rejected",
        reasons=[],
        lineage=lineage,
        test_set=continual_test_set(parent, "b1"),
    )
    registry = record_decision(load_registry(layout.registry_dir), entry, True, ["gain"], "t1")
    save_registry(registry, layout.registry_dir)
    return identity


def test_a_weekly_retrain_is_judged_on_the_continual_champions_images_it_did_not_learn(
    layout: Layout,
) -> None:
    """After continual learning the champion's test set is the old test split + the batch's
    test part. The weekly pipeline's candidate (a new split that put 5 old test images and one
    batch test image into its train split) is compared on the rest: old and batch images that
    neither model learned from, and only those."""
    promote(gate_params(), layout)
    old_test = np.load(layout.packed_dir / "test_x.npy")
    batch_test = np.random.default_rng(9).integers(0, 256, size=(10, 1, 8, 8), dtype=np.uint8)
    # labelled c: the champion (as A, always b) gets them wrong, the candidate (always c) right
    continual = crown_continual_champion(layout, (batch_test, np.full(10, 2)))
    champion_files = champion(layout.registry_dir)
    registered, labels = load_test_set(champion_files.test_set)
    assert len(registered) == 70  # 60 old + 10 of the batch
    # the weekly re-split: 5 old test images and 1 batch test image are now train images
    train = np.load(layout.packed_dir / "train_x.npy")
    np.save(
        layout.packed_dir / "train_x.npy", np.concatenate([train, old_test[:5], batch_test[:1]])
    )
    np.save(layout.packed_dir / "train_y.npy", np.zeros(len(train) + 6, dtype=np.int64))
    np.save(layout.packed_dir / "test_x.npy", old_test[5:])
    np.save(layout.packed_dir / "test_y.npy", np.load(layout.packed_dir / "test_y.npy")[5:])
    write_model(layout, seed=1)  # another model: it disagrees with the champion on some images
    write_reports(layout)

    report = promote(gate_params(**{"gate.max_regression": 0.99}), layout)
    rule = next(r for r in report.rules if r.name == "no_regression")
    # the images both may be scored on: every registered one but the 6 the candidate trained on
    used = np.ones(70, dtype=bool)
    used[:5] = used[60] = False
    assert f"against champion {continual} on its 64 test images (6 left out" in rule.reason
    champion_network, champion_card = load_model(champion_files.folder)
    candidate_network, candidate_card = load_model(layout.models_dir)
    right = {
        name: predict(net, card.preprocessing(), registered[used]).argmax(1) == labels[used]
        for name, (net, card) in {
            "champion": (champion_network, champion_card),
            "candidate": (candidate_network, candidate_card),
        }.items()
    }
    wins = int((right["candidate"] & ~right["champion"]).sum())
    losses = int((~right["candidate"] & right["champion"]).sum())
    assert (wins, losses) == (9, 55)  # the batch's 9 unseen images, the old split's 55
    assert f"{wins} won and {losses} lost of 64" in rule.reason
    assert report.decision == "promoted" and report.previous_champion.id == continual
    # the registry says which test set each accuracy was measured on
    entries = {e.id: e for e in load_registry(layout.registry_dir).candidates}
    assert entries[continual].measured_on.startswith("test set of ")
    assert entries[report.candidate.id].measured_on.startswith("pipeline test split ")
    assert "accuracy measured on" in table(load_registry(layout.registry_dir)).splitlines()[0]
