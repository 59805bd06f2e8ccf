"""The evaluation metrics (checked against scikit-learn and hand-worked cases), the evaluate
stage's report building and summary line, and its two pictures (readable at 50 classes)."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from matplotlib.transforms import Bbox
from sklearn.metrics import f1_score, precision_recall_fscore_support

from tasks.core.config import Params, load_params
from tasks.core.layout import Layout
from tasks.core.plotting import pyplot, save_figure
from tasks.evaluate import (
    evaluation_report,
    headline,
    headline_from_reports,
    rounded,
    score_test,
    summary_line,
)
from tasks.evaluation.metrics import (
    accuracy_interval,
    bootstrap_interval,
    calibration,
    confusion_matrix,
    macro_f1,
    paired_score_test,
    per_class_scores,
)
from tasks.evaluation.plots import confusion_figure, reliability_figure
from tests.conftest import REPO_ROOT

CLASSES = ["cat", "dog", "bird", "fish"]


def _params() -> Params:
    return load_params(REPO_ROOT / "params.yaml")


def _predictions(n: int, n_classes: int, accuracy: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    wrong = (labels + rng.integers(1, n_classes, n)) % n_classes
    predicted = np.where(rng.random(n) < accuracy, labels, wrong)
    return labels, predicted


def _probabilities(predicted: np.ndarray, n_classes: int, confidence: float) -> np.ndarray:
    """Rows with `confidence` on the predicted class and the rest spread evenly."""
    rows = np.full((len(predicted), n_classes), (1 - confidence) / (n_classes - 1))
    rows[np.arange(len(predicted)), predicted] = confidence
    return rows


# --------------------------------------------------------------------------- metrics


def test_confusion_matrix_counts_actual_by_predicted() -> None:
    counts = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_per_class_scores_and_macro_f1_agree_with_scikit_learn() -> None:
    labels, predicted = _predictions(500, len(CLASSES), 0.7, seed=1)
    scores = per_class_scores(labels, predicted, CLASSES)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(len(CLASSES)), zero_division=0
    )
    for index, name in enumerate(CLASSES):
        assert scores[name].precision == pytest.approx(precision[index])
        assert scores[name].recall == pytest.approx(recall[index])
        assert scores[name].f1 == pytest.approx(f1[index])
        assert scores[name].support == support[index]
    assert macro_f1(scores) == pytest.approx(f1_score(labels, predicted, average="macro"))


def test_a_class_absent_from_the_labels_does_not_count_in_macro_f1() -> None:
    labels, predicted = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 3])  # nothing is a 2 or a 3
    scores = per_class_scores(labels, predicted, CLASSES)
    assert scores["bird"].support == 0 and scores["bird"].f1 == 0.0
    assert scores["fish"].precision == 0.0  # predicted once, never right
    assert macro_f1(scores) == pytest.approx((1.0 + 2 / 3) / 2)  # cat 1.0, dog: P 1, R 0.5


def test_the_bootstrap_interval_is_seeded_and_holds_the_accuracy() -> None:
    correct = np.random.default_rng(0).random(300) < 0.9
    interval = bootstrap_interval(correct, 1000, 0.95, seed=3)
    assert interval == bootstrap_interval(correct, 1000, 0.95, seed=3)
    assert interval != bootstrap_interval(correct, 1000, 0.95, seed=4)
    low, high = interval
    assert low < correct.mean() < high
    # the normal approximation's half-width, 1.96 * sqrt(p (1 - p) / n), about 0.034 here
    assert (high - low) / 2 == pytest.approx(1.96 * np.sqrt(0.9 * 0.1 / 300), rel=0.2)
    narrow = bootstrap_interval(correct, 1000, 0.5, seed=3)
    assert low < narrow[0] < narrow[1] < high
    assert bootstrap_interval(np.ones(50, dtype=bool), 200, 0.95, seed=0) == (1.0, 1.0)
    with pytest.raises(ValueError, match="no images"):
        bootstrap_interval(np.array([], dtype=bool), 200, 0.95, seed=0)


def test_the_bootstrap_interval_covers_the_true_accuracy_about_as_often_as_it_says() -> None:
    rng = np.random.default_rng(11)
    covered = [
        low <= 0.8 <= high
        for low, high in (
            bootstrap_interval(rng.random(200) < 0.8, 400, 0.9, seed=repeat)
            for repeat in range(120)
        )
    ]
    assert 0.82 <= np.mean(covered) <= 0.97


def test_the_paired_test_sees_a_better_model_and_a_tie() -> None:
    rng = np.random.default_rng(5)
    champion = rng.random(400) < 0.9
    better = champion | (rng.random(400) < 0.5)  # right wherever the champion is, and more
    tie = paired_score_test(champion, champion, 0.0, 0.95)
    assert (tie.difference, tie.wins, tie.losses, tie.passed) == (0.0, 0, 0, False)
    ahead = paired_score_test(better, champion, 0.0, 0.95)
    assert ahead.difference == pytest.approx(better.mean() - champion.mean())
    assert ahead.passed and 0 < ahead.lower_bound <= ahead.difference
    assert not paired_score_test(champion, better, 0.02, 0.95).passed
    assert paired_score_test(champion, better, 0.2, 0.95).passed  # within a 20-point margin


def test_a_large_bootstrap_is_drawn_in_bounded_chunks_and_stays_seeded() -> None:
    correct = np.random.default_rng(2).random(20_000) < 0.95  # 400 resamples of 20 000: 2 chunks
    low, high = bootstrap_interval(correct, 400, 0.95, seed=1)
    assert (low, high) == bootstrap_interval(correct, 400, 0.95, seed=1)
    assert low < correct.mean() < high and high - low < 0.01


def test_calibration_bins_and_ece_by_hand() -> None:
    labels = np.array([0, 0, 0, 0, 1])
    # four images at confidence 0.95 (three right), one at exactly 0.5: bin (0.4, 0.5]
    probabilities = np.array([[0.95, 0.05]] * 4 + [[0.5, 0.5]])
    probabilities[3] = [0.05, 0.95]  # the fourth predicts 1, its label is 0
    ece, bins = calibration(probabilities, labels, 10)
    assert [one_bin.count for one_bin in bins] == [0, 0, 0, 0, 1, 0, 0, 0, 0, 4]
    assert bins[9].accuracy == 0.75 and bins[9].confidence == pytest.approx(0.95)
    assert bins[4].accuracy == 0.0  # argmax of a tie is class 0; the label is 1
    assert bins[0].confidence == 0.0 and bins[0].accuracy == 0.0  # empty
    assert ece == pytest.approx(4 / 5 * 0.2 + 1 / 5 * 0.5)
    _, full = calibration(np.array([[1.0, 0.0]]), np.array([0]), 4)
    assert full[-1].count == 1  # a confidence of exactly 1 is in the last bin


def test_a_calibrated_model_has_a_small_ece_and_an_overconfident_one_a_large_one() -> None:
    rng = np.random.default_rng(8)
    confidence = rng.uniform(0.5, 1.0, 20_000)
    correct = rng.random(20_000) < confidence  # right exactly as often as it claims
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    labels = np.where(correct, 0, 1)
    assert calibration(probabilities, labels, 10)[0] < 0.02
    overconfident = np.stack([np.full(20_000, 0.99), np.full(20_000, 0.01)], axis=1)
    assert calibration(overconfident, labels, 10)[0] == pytest.approx(0.99 - (labels == 0).mean())


# --------------------------------------------------------------------------- the stage's reports


def test_score_test_and_the_reports_it_feeds(tmp_path: Path) -> None:
    params = _params()
    labels, predicted = _predictions(300, len(CLASSES), 0.9, seed=4)
    probabilities = _probabilities(predicted, len(CLASSES), 0.8)
    scores = score_test(probabilities, labels, CLASSES, params.evaluate, params.seed)
    assert scores.n == 300 and scores.accuracy == float((predicted == labels).mean())
    assert scores.ece == pytest.approx(abs(scores.accuracy - 0.8))
    assert scores.confusion.sum() == 300

    baseline = {"name": "logistic_regression", "accuracy": 0.712345678, "macro_f1": 0.7}
    details = json.loads(json.dumps(evaluation_report(scores, baseline, params.evaluate, 42)))
    test = details["test"]
    assert set(test) == {
        "n",
        "accuracy",
        "accuracy_ci",
        "macro_f1",
        "ece",
        "per_class",
        "reliability",
        "bootstrap",
    }
    assert set(test["per_class"]) == set(CLASSES)
    assert set(test["per_class"]["cat"]) == {"precision", "recall", "f1", "support"}
    assert set(test["reliability"][0]) == {"low", "high", "count", "confidence", "accuracy"}
    assert test["bootstrap"]["seed"] == 42 and details["baseline"] == baseline

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "train.json").write_text('{"val_acc": 0.912345, "train_val_gap": 0.01}')
    metrics = headline(scores, baseline, Layout(tmp_path))
    assert metrics["baseline"] == {"name": "logistic_regression", "accuracy": 0.7123}
    assert metrics["val"] == {"accuracy": 0.9123, "gap": 0.01}
    assert set(metrics["test"]) == {"accuracy", "macro_f1", "accuracy_ci", "ece"}
    for value in [*metrics["test"]["accuracy_ci"], metrics["test"]["ece"]]:
        assert value == round(value, 4)


def test_headline_from_reports_reads_the_search_only_when_it_ran(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    assert headline_from_reports(layout) == {}
    layout.tune_summary.parent.mkdir(parents=True)
    layout.tune_summary.write_text('{"enabled": false}')
    assert headline_from_reports(layout) == {}
    layout.tune_summary.write_text('{"enabled": true, "best_val_acc": 0.97, "trials": 8}')
    assert headline_from_reports(layout) == {"tune": {"best_val_acc": 0.97, "trials": 8}}


def test_rounded_reaches_into_dicts_and_lists_and_leaves_the_rest() -> None:
    assert rounded({"a": [0.123456, 1], "b": {"c": 2.0000049}, "d": "x"}) == {
        "a": [0.1235, 1],
        "b": {"c": 2.0},
        "d": "x",
    }


def test_the_summary_line_is_one_line_with_the_interval_and_the_baseline() -> None:
    metrics = {
        "test": {
            "accuracy": 0.9926,
            "accuracy_ci": [0.9815, 1.0],
            "macro_f1": 0.9925,
            "ece": 0.012,
        },
        "baseline": {"name": "logistic_regression", "accuracy": 0.9704},
    }
    assert summary_line(metrics, 0.95) == (
        "test accuracy 0.9926 (95% CI 0.9815-1.0000), macro-F1 0.9925, ECE 0.012 | "
        "baseline (logistic_regression) 0.9704"
    )
    assert "(CI 0.9815-1.0000)" in summary_line(metrics)  # --show before evaluation.json exists


# --------------------------------------------------------------------------- the pictures


def _extent_inside(inner: Bbox, outer: Bbox, slack: float = 0.5) -> bool:
    return (
        inner.x0 >= outer.x0 - slack
        and inner.x1 <= outer.x1 + slack
        and inner.y0 >= outer.y0 - slack
        and inner.y1 <= outer.y1 + slack
    )


def test_the_confusion_figure_writes_every_count_inside_its_cell_at_50_classes() -> None:
    n_classes = 50
    classes = [f"species_{index:02d}" for index in range(n_classes)]
    rng = np.random.default_rng(6)
    labels = rng.integers(0, n_classes, 60_000)  # 4-digit counts on the diagonal
    # mistakes between neighbouring classes only: each count must fit its own cell whether the
    # matrix is dense or not, and 200 texts draw faster than 2 500
    neighbour = (labels + rng.integers(1, 4, len(labels))) % n_classes
    predicted = np.where(rng.random(len(labels)) < 0.9, labels, neighbour)
    counts = confusion_matrix(labels, predicted, n_classes)
    figure = confusion_figure(counts, classes)
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == classes
    cell_texts = list(axes.texts)
    assert sorted(int(text.get_text()) for text in cell_texts) == sorted(counts[counts > 0])
    assert max(len(text.get_text()) for text in cell_texts) == 4

    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    to_pixels = axes.transData
    for text in cell_texts:
        column, row = text.get_position()
        corners = to_pixels.transform([(column - 0.5, row - 0.5), (column + 0.5, row + 0.5)])
        cell = Bbox.from_extents(*corners.min(axis=0), *corners.max(axis=0))
        assert _extent_inside(text.get_window_extent(renderer), cell), text.get_text()
    tick_boxes = [label.get_window_extent(renderer) for label in axes.get_yticklabels()]
    for upper, lower in pairwise(tick_boxes):
        assert not upper.overlaps(lower), "class names overlap"
    pyplot().close(figure)


def test_the_confusion_figure_colours_by_row_share_and_rejects_a_wrong_shape(
    tmp_path: Path,
) -> None:
    counts = np.array([[90, 10], [1, 1]])
    figure = confusion_figure(counts, ["common", "rare"])
    shares = figure.axes[0].images[0].get_array()
    assert np.allclose(shares, [[0.9, 0.1], [0.5, 0.5]])  # the rare class's mistake shows
    save_figure(figure, tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="3 classes"):
        confusion_figure(counts, ["a", "b", "c"])


def test_the_reliability_figure_shows_the_ece_the_bins_and_their_counts() -> None:
    labels, predicted = _predictions(500, len(CLASSES), 0.7, seed=9)
    confidence = np.random.default_rng(9).uniform(0.3, 1.0, 500)
    probabilities = _probabilities(predicted, len(CLASSES), 1.0) * confidence[:, None]
    ece, bins = calibration(probabilities, labels, 10)
    figure = reliability_figure(bins, ece)
    top, bottom = figure.axes
    assert f"ECE {ece:.3f}" in top.get_title()
    counts = [patch.get_height() for patch in bottom.patches]
    assert counts == [one_bin.count for one_bin in bins]
    assert sorted(int(text.get_text()) for text in bottom.texts) == sorted(
        one_bin.count for one_bin in bins if one_bin.count
    )
    diagonal = top.lines[0].get_xydata()
    assert diagonal.tolist() == [[0.0, 0.0], [1.0, 1.0]]
    pyplot().close(figure)
    with pytest.raises(ValueError, match="no bins"):
        reliability_figure([], 0.0)


def test_an_all_correct_test_set_gets_the_exact_interval_not_a_certainty() -> None:
    """Every resample of 270 right answers is right: the bootstrap would say [1, 1]."""
    low, high, method = accuracy_interval(np.ones(270, dtype=bool), 2000, 0.95, seed=0)
    assert method == "clopper-pearson" and high == 1.0
    assert low == pytest.approx(0.025 ** (1 / 270))  # P(270 of 270 | p = low) = 2.5 %
    low, high, method = accuracy_interval(np.zeros(50, dtype=bool), 2000, 0.95, seed=0)
    assert (method, low) == ("clopper-pearson", 0.0) and 0.0 < high < 0.1
    one_wrong = np.ones(270, dtype=bool)
    one_wrong[0] = False
    low, high, method = accuracy_interval(one_wrong, 2000, 0.95, seed=0)
    assert method == "bootstrap" and low < 269 / 270 <= high
