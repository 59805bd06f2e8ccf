"""The explain stage's output on the trained digits model (one `dvc repro` of the whole pipeline).

Grids for every method, a summary that counts what it shows, and the randomization check passed
on the real model; the same check fails when the "trained" model is its own random copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tasks.core.config import EXPLAIN_METHODS, load_params
from tasks.core.layout import Layout
from tasks.data.packed import load_split
from tasks.explaining.attributions import ScaledInputModel, predicted_classes
from tasks.explaining.sanity import randomization_check, randomized_copy
from tasks.modeling.artifact import load_model

pytestmark = pytest.mark.slow


def _summary(repo: Path) -> dict[str, Any]:
    return json.loads((Layout(repo).explain_reports / "summary.json").read_text())


def test_every_method_has_a_grid_of_the_explained_images(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    params = load_params(layout.params_file)
    summary = _summary(trained_repo)
    assert set(summary["methods"]) == set(EXPLAIN_METHODS)
    for method in EXPLAIN_METHODS:
        with Image.open(layout.explain_reports / f"{method}.png") as grid:
            assert grid.format == "PNG" and grid.width > 600 and grid.height > 300
    images = summary["images"]
    _, test_y = load_split("test", layout.packed_dir)
    classes = len(set(test_y.tolist()))
    assert images["sampled"] == params.explain.per_class * classes
    assert images["misclassified_shown"] == min(
        images["misclassified"], params.explain.max_misclassified
    )


def test_the_randomization_check_passed_on_the_trained_model(trained_repo: Path) -> None:
    summary = _summary(trained_repo)
    assert summary["passed"] is True
    for method, entry in summary["methods"].items():
        sanity = entry["sanity"]
        assert sanity["passed"] and sanity["correlation"] < sanity["threshold"], method


def test_the_check_fails_for_a_model_that_is_its_own_random_copy(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    params = load_params(layout.params_file)
    _, card = load_model(layout.models_dir)
    preprocessing = card.preprocessing()
    impostor = ScaledInputModel(randomized_copy(card.build_network, params.seed), preprocessing)
    randomized = ScaledInputModel(randomized_copy(card.build_network, params.seed), preprocessing)
    test_x, _ = load_split("test", layout.packed_dir)
    images = preprocessing.scale(test_x[: params.explain.sanity_samples])
    targets = predicted_classes(impostor, images, params.explain.internal_batch_size)
    for method in EXPLAIN_METHODS:
        result = randomization_check(
            method, impostor, randomized, images, targets, params.explain, params.seed
        )
        assert not result.passed, result
