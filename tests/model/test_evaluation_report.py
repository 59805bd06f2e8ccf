"""The evaluate stage's reports on the digits, after one real `dvc repro` (the trained_repo
fixture): the acceptance figures (the accuracy interval's lower end, macro-F1, ECE, the same-run
baseline), the details agree with the headline, and the figures are what the model computes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.core.config import load_params
from tasks.core.layout import Layout
from tasks.data.packed import load_split
from tasks.evaluate import score_test, summary_line
from tasks.modeling.artifact import load_model, predict
from tests.conftest import run

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _reports(repo: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    layout = Layout(repo)
    return (
        json.loads(layout.metrics_file.read_text()),
        json.loads(layout.evaluation_report.read_text()),
    )


def test_the_digits_meet_the_acceptance_figures(trained_repo: Path) -> None:
    metrics, details = _reports(trained_repo)
    params = load_params(Layout(trained_repo).params_file)
    test = metrics["test"]
    low, high = test["accuracy_ci"]
    assert low >= 0.98, f"the accuracy interval's lower end is {low} (accuracy {test['accuracy']})"
    assert low <= test["accuracy"] <= high <= 1.0
    assert 0.9 < test["macro_f1"] <= 1.0
    assert 0.0 <= test["ece"] < 0.1
    # the baseline was fitted and scored by the same stage run, on the same test split
    assert metrics["baseline"]["name"] == params.evaluate.baseline
    assert details["baseline"]["name"] == params.evaluate.baseline
    assert metrics["baseline"]["accuracy"] == round(details["baseline"]["accuracy"], 4)
    assert 0.8 < details["baseline"]["macro_f1"] <= 1.0
    assert set(metrics) == {"test", "baseline", "val"}  # the search was off: no tune figures


def test_the_headline_is_the_rounded_details(trained_repo: Path) -> None:
    metrics, details = _reports(trained_repo)
    for key in ("accuracy", "macro_f1", "ece"):
        assert metrics["test"][key] == round(details["test"][key], 4), key
    assert metrics["test"]["accuracy_ci"] == [round(v, 4) for v in details["test"]["accuracy_ci"]]


def test_the_details_add_up(trained_repo: Path) -> None:
    params = load_params(Layout(trained_repo).params_file)
    _, details = _reports(trained_repo)
    test = details["test"]
    assert sorted(test["per_class"], key=int) == [str(digit) for digit in range(10)]
    assert sum(scores["support"] for scores in test["per_class"].values()) == test["n"]
    assert len(test["reliability"]) == params.evaluate.calibration_bins
    assert sum(one_bin["count"] for one_bin in test["reliability"]) == test["n"]
    all_right = test["accuracy"] == 1.0  # then the exact binomial interval, not the bootstrap
    assert test["bootstrap"] == {
        "method": "clopper-pearson" if all_right else "bootstrap",
        "samples": params.evaluate.bootstrap_samples,
        "confidence": params.evaluate.confidence,
        "seed": params.seed,
    }
    confusion = (Layout(trained_repo).confusion_file).read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == test["n"] + 1


def test_the_reports_hold_what_the_model_computes(trained_repo: Path) -> None:
    """Scoring the exported model again, in this process, gives the stage's figures exactly:
    the bootstrap is seeded by params.seed and nothing else is random."""
    layout = Layout(trained_repo)
    params = load_params(layout.params_file)
    network, card = load_model(layout.models_dir)
    test_x, test_y = load_split("test", layout.packed_dir)
    probabilities = predict(network, card.preprocessing(), test_x)
    scores = score_test(probabilities, test_y, card.classes, params.evaluate, params.seed)
    _, details = _reports(trained_repo)
    assert scores.accuracy == details["test"]["accuracy"]
    assert list(scores.interval) == details["test"]["accuracy_ci"]
    assert scores.macro_f1 == details["test"]["macro_f1"]
    assert scores.ece == pytest.approx(details["test"]["ece"], abs=1e-12)
    assert int(np.trace(scores.confusion)) == round(scores.accuracy * scores.n)


def test_the_plots_are_pictures_and_show_prints_one_line(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    for name in ("confusion.png", "reliability.png"):
        picture = (layout.evaluation_plots / name).read_bytes()
        assert picture.startswith(PNG_MAGIC) and len(picture) > 10_000, name
    shown = run(["python", "-m", "tasks.evaluate", "--show"], trained_repo).stdout
    metrics, _ = _reports(trained_repo)
    assert shown.splitlines() == [
        summary_line(metrics, load_params(layout.params_file).evaluate.confidence)
    ]
    assert shown.startswith("test accuracy ") and "95% CI" in shown and "macro-F1" in shown
