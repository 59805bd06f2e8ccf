"""The promotion gate on the trained digits model: a deliberately worse candidate is rejected with
a reason and the champion stays; promote rerun on the champion changes nothing.

Each test works on a copy of the shared `trained_repo` (whose `dvc repro` ran promote, so its
registry holds the trained model as champion) and runs the real stages there as commands.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tasks.core.config import load_params
from tasks.core.layout import Layout
from tasks.modeling.artifact import ModelCard, save_model
from tasks.registry.store import check_integrity, load_registry
from tests.conftest import run

pytestmark = pytest.mark.slow

# what evaluate and promote read and write, and the code that runs them
COPIED = (
    "tasks",
    "params.yaml",
    "dvc.yaml",
    "data/packed",
    "models/model.safetensors",
    "models/model.json",
    "models/onnx",
    "models/registry",
    "reports/metrics.json",
    "reports/compress.json",
    "reports/gate.json",
)


def copy_for_promote(source: Path, destination: Path) -> Path:
    """The files promote needs from `source`, copied (never linked) to `destination`."""
    for name in COPIED:
        origin, target = source / name, destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(origin, target)
    return destination


@pytest.fixture
def judged_repo(trained_repo: Path, tmp_path: Path) -> Path:
    return copy_for_promote(trained_repo, tmp_path / "repo")


def test_a_model_trained_for_zero_epochs_is_rejected_and_the_champion_kept(
    judged_repo: Path,
) -> None:
    layout = Layout(judged_repo)
    champion_id = load_registry(layout.registry_dir).champion
    assert champion_id is not None, "dvc repro should have made the trained model champion"
    # the same card with freshly initialised weights: a retrain of 0 epochs
    card = ModelCard.load(layout.models_dir / "model.json")
    torch.manual_seed(load_params(layout.params_file).seed)
    save_model(card.build_network(), card, layout.models_dir)
    run(["python", "-m", "tasks.evaluate"], judged_repo)  # its metrics, as dvc repro would

    result = run(["python", "-m", "tasks.promote"], judged_repo)  # a rejection exits 0

    line = result.stdout.strip()
    assert line.startswith("promote: rejected ") and "gate.min_accuracy" in line, line
    gate = json.loads(layout.gate_report.read_text())
    assert gate["decision"] == "rejected" and gate["champion"]["id"] == champion_id
    assert gate["previous_champion"]["id"] == champion_id
    regression = next(r for r in gate["rules"] if r["name"] == "no_regression")
    assert not regression["passed"]
    assert regression["reason"].startswith(f"against champion {champion_id} on its ")
    assert "not shown that the candidate trails by less than" in regression["reason"]
    registry = load_registry(layout.registry_dir)
    assert registry.champion == champion_id
    assert registry.entry(gate["candidate"]["id"]).status == "rejected"
    assert [c.id for c in registry.candidates if c.status == "champion"] == [champion_id]
    check_integrity(layout.registry_dir)


def test_promote_rerun_on_the_champion_adds_nothing(judged_repo: Path) -> None:
    layout = Layout(judged_repo)
    registry_file = layout.registry_dir / "registry.json"
    before = registry_file.read_bytes()
    registry = load_registry(layout.registry_dir)

    result = run(["python", "-m", "tasks.promote"], judged_repo)
    gate_once = layout.gate_report.read_bytes()
    run(["python", "-m", "tasks.promote"], judged_repo)

    assert result.stdout.strip() == (
        f"promote: {registry.champion} is already the champion; registry unchanged"
    )
    assert registry_file.read_bytes() == before
    assert layout.gate_report.read_bytes() == gate_once  # no wall-clock time in it
    assert json.loads(gate_once)["decision"] == "promoted"
    assert len(load_registry(layout.registry_dir).candidates) == len(registry.candidates)
    check_integrity(layout.registry_dir)
