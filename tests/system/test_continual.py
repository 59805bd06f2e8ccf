"""Continual learning for real: `python -m flows.continual` on a copy of the trained repository
(real DVC, the tests' real Prefect server, real BentoML), with a batch of inverted digits.

The batch is made from the copy's own train images, inverted (white digits on black): the
champion has never seen such images and scores near chance on them, so a challenger fine-tuned
on them (with replay of the old train split) must gain at least 10 points there, and pass the
promotion gate's one rule: shown better on the batch's test part, shown not worse by
`gate.max_regression` on the old test set. Inverted images do not collide with their originals
by perceptual hash, so the leakage check keeps them. Two of the champion's registered test images
are planted in the packed train split first: replay must leave them out and count them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.registry.store import champion, load_registry, load_test_set
from tests.conftest import run, write_params

PER_CLASS = 40  # images per class in a batch: 28 to train on, 12 to test on


def inverted_batch(repo: Path, folder: Path, take: str = "head") -> Path:
    """`PER_CLASS` of the repository's train images per class, inverted, in class folders."""
    split = pd.read_csv(repo / "data" / "splits" / "split.csv", dtype=str, keep_default_na=False)
    train = split[split["split"] == "train"].sort_values("path")
    for label, rows in train.groupby("label"):
        for path in getattr(rows["path"], take)(PER_CLASS):
            pixels = np.asarray(Image.open(repo / "data" / "raw" / "files" / path).convert("L"))
            (folder / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(255 - pixels).save(folder / label / Path(path).name)
    return folder


def plant_registered_test_images(repo: Path, count: int) -> int:
    """Append `count` of the champion's registered test images (and labels) to the packed train
    split, as a re-split could put them there; the number planted."""
    images, labels = load_test_set(champion(repo / "models" / "registry").test_set)
    packed = repo / "data" / "packed"
    for name, part in (("train_x", images[:count]), ("train_y", labels[:count])):
        path = packed / f"{name}.npy"
        split = np.load(path)
        path.unlink()  # a new file: never written through a link into a DVC cache
        np.save(path, np.concatenate([split, part.astype(split.dtype)]))
    return count


def ensure_champion(repo: Path) -> str:
    """The registry's champion. The trained repository's gate normally crowns its model; if it
    did not (a slow machine, fewer epochs), the gate is opened for that one model here, the
    documented way to get a first champion: lower the gate's thresholds and run promote."""
    registry_dir = repo / "models" / "registry"
    current = load_registry(registry_dir).champion
    if current is None:
        gate = {"min_accuracy": 0.0, "min_class_accuracy": 0.0, "min_invariance": 0.0}
        write_params(repo, {"gate": {**gate, "require_beats_baseline": False}})
        run(["python", "-m", "tasks.promote"], repo)
        current = load_registry(registry_dir).champion
    assert current is not None
    return current


def continual_flow(repo: Path, api_url: str, *arguments: str):
    """`python -m flows.continual` recorded in the tests' Prefect server (`prefect_server`)."""
    environment = {"PREFECT_API_URL": api_url}
    return run(["python", "-m", "flows.continual", *arguments], repo, check=False, env=environment)


def bentos(repo: Path) -> set[str]:
    folder = repo / "models" / "bentoml" / "bentos" / "sixfold-classifier"
    return {path.name for path in folder.iterdir() if path.name != "latest"}


@pytest.mark.slow
def test_an_inverted_batch_is_learnt_and_promoted_without_forgetting(
    trained_repo: Path, prefect_server: str, tmp_path: Path
) -> None:
    repo = Path(shutil.copytree(trained_repo, tmp_path / "repo", symlinks=True))
    parent = ensure_champion(repo)
    batch = inverted_batch(repo, tmp_path / "inverted")
    planted = plant_registered_test_images(repo, count=2)

    result = continual_flow(repo, prefect_server, "--batch", str(batch))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    reports = list((repo / "reports" / "continual").glob("*.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    version = report["version"]
    old, new = report["accuracy"]["old_test"], report["accuracy"]["new_test"]
    assert report["promoted"], report["reasons"]
    assert new["challenger"] - new["champion"] >= 0.10
    rules = {rule["name"]: rule for rule in report["rules"]}
    assert rules["gain_on_new_data"]["passed"] and rules["forgetting"]["passed"]
    assert "gate.max_regression" in rules["forgetting"]["reason"]
    # the planted test images were in the replay pool: left out, and counted
    assert report["replay_excluded"]["exact"] == planted
    assert report["replay_excluded"]["test_sets"] >= 1
    assert report["batch"]["accepted"] == 10 * PER_CLASS
    assert report["batch"]["train"] + report["batch"]["test"] == 10 * PER_CLASS
    assert report["batch"]["leakage"]["dropped_from_test"] == 0
    assert (reports[0].with_suffix(".png")).exists()

    registry = load_registry(repo / "models" / "registry")
    assert registry.champion == report["challenger"] != parent
    entry = registry.champion_entry()
    assert entry.parent == parent and entry.data_version == version
    assert entry.lineage is not None and entry.lineage.batch == version
    assert entry.test_images == old["images"] + new["images"]  # judged on both from now on
    assert entry.measured_on == f"test set of {parent} + batch {version} test part"
    assert (repo / "data" / "batches" / f"{version}.dvc").exists()
    assert report["bento"].split(":")[1] in bentos(repo)
    assert json.loads((repo / "reports" / "package.json").read_text())["bento"] == report["bento"]
    assert "promoted" in result.stdout + result.stderr

    # the same batch again: the same version, nothing new
    again = run(["python", "-m", "tasks.continual.run", "--batch", str(batch)], repo)
    assert f"batch {version} was learnt from before" in again.stdout
    assert load_registry(repo / "models" / "registry") == registry

    # a batch the champion already knows, with a broken file: quarantined, and not enough gain
    known = inverted_batch(repo, tmp_path / "known", take="tail")
    (known / "3" / "broken.png").write_bytes(b"not an image")
    # the champion has learnt inverted digits: a gain, if any, is small; a stricter confidence
    # makes sure it is not shown (the rule, not a separate continual threshold)
    write_params(repo, {"gate": {"confidence": 0.9999}})
    built = bentos(repo)
    second = run(["python", "-m", "tasks.continual.run", "--batch", str(known)], repo)
    assert "continual: kept champion" in second.stdout
    reports = {path.stem: json.loads(path.read_text()) for path in reports[0].parent.glob("*.json")}
    rejected = next(r for name, r in reports.items() if name != version)
    assert not rejected["promoted"] and rejected["batch"]["reasons"]["undecodable"] == 1
    assert load_registry(repo / "models" / "registry").champion == registry.champion
    assert bentos(repo) == built  # the bento is left alone

    # labels the champion does not know, only: quarantined, and the run stops with one line
    unknown = tmp_path / "unknown"
    for label in ("cat", "dog"):
        (unknown / label).mkdir(parents=True)
        for index in range(3):
            pixels = np.full((8, 8), 40 * index, dtype=np.uint8)
            Image.fromarray(pixels).save(unknown / label / f"{index}.png")
    refused = continual_flow(repo, prefect_server, "--batch", str(unknown))
    assert refused.returncode == 1
    errors = [line for line in (refused.stdout + refused.stderr).splitlines() if "error:" in line]
    assert errors and "unknown_label=6" in errors[0], refused.stdout[-3000:]

    # started without a batch (as by the drift monitor) and none configured: not a failure
    nothing = continual_flow(repo, prefect_server)
    assert nothing.returncode == 0
    assert "no labelled batch is configured" in nothing.stdout + nothing.stderr
