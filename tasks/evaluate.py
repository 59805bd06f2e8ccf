"""evaluate: score the exported model on the test split, with its uncertainty, beside a baseline.

Run on its own with ``python -m tasks.evaluate`` (after train); ``--show`` prints the last run's
summary line without computing anything.

On the test split: accuracy with a seeded percentile bootstrap interval (`evaluate.confidence`,
`evaluate.bootstrap_samples`, seeded by `seed`: 270 digits leave an accuracy of 0.99 uncertain by
about a point, which a bare figure hides; when every image is right, the exact binomial interval:
:func:`tasks.evaluation.metrics.accuracy_interval`), macro-F1 and per-class precision and recall
(a rare class counts as much as a common one), and the expected calibration error over
`evaluate.calibration_bins` confidence bins (is a 0.9 confidence right 9 times in 10?). The
figures come from :mod:`tasks.evaluation.metrics`, which the promotion gate shares.

The baseline (logistic regression or an RBF SVC on raw pixels, `evaluate.baseline`) is trained on
the same train split and scored on the same test split in the same run, so the comparison is
fair. Writes:

- `reports/metrics.json`, the only file declared as DVC metrics (so `dvc exp show` and
  `dvc metrics diff` compare a few columns), rounded to 4 decimals: the test figures, the
  baseline, the exported epoch's validation accuracy and train/validation gap (from
  `reports/train.json`) and the search's best validation accuracy (from
  `reports/tune/summary.json`);
- `reports/evaluation.json`, the details (a plain output): per-class scores, the reliability
  bins, the bootstrap settings, the baseline's macro-F1;
- `reports/plots/confusion.csv` (DVC's confusion template), `confusion.png` and
  `reliability.png`.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from tasks.core.config import EvaluateConfig, Params, load_params_or_exit
from tasks.core.io import read_json, write_json
from tasks.core.layout import Layout
from tasks.core.plotting import save_figure
from tasks.core.runner import stage_main
from tasks.data.packed import Split, load_split
from tasks.evaluation.metrics import (
    CalibrationBin,
    ClassScores,
    accuracy_interval,
    as_dicts,
    calibration,
    confusion_matrix,
    macro_f1,
    per_class_scores,
)
from tasks.evaluation.plots import confusion_figure, reliability_figure
from tasks.modeling.artifact import load_model, predict

HEADLINE_DIGITS = 4  # metrics.json: enough to see a one-image change in 10 000, narrow columns


@dataclass(frozen=True)
class TestScores:
    """Everything the stage reports about one model on the test split."""

    n: int
    accuracy: float
    interval: tuple[float, float]
    interval_method: str  # "bootstrap", or "clopper-pearson" when every image is right
    per_class: dict[str, ClassScores]
    macro_f1: float
    ece: float
    reliability: list[CalibrationBin]
    confusion: np.ndarray  # counts[actual, predicted]


def score_test(
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    config: EvaluateConfig,
    seed: int,
) -> TestScores:
    """The test figures of class `probabilities` (N, classes) against the true `labels`."""
    predicted = probabilities.argmax(axis=1)
    correct = predicted == labels
    per_class = per_class_scores(labels, predicted, classes)
    *interval, method = accuracy_interval(
        correct, config.bootstrap_samples, config.confidence, seed
    )
    ece, reliability = calibration(probabilities, labels, config.calibration_bins)
    return TestScores(
        n=len(labels),
        accuracy=float(correct.mean()),
        interval=(interval[0], interval[1]),
        interval_method=method,
        per_class=per_class,
        macro_f1=macro_f1(per_class),
        ece=ece,
        reliability=reliability,
        confusion=confusion_matrix(labels, predicted, len(classes)),
    )


def baseline_predictions(
    config: EvaluateConfig, seed: int, train: Split, test_images: np.ndarray
) -> np.ndarray:
    """Fit the classical baseline on train pixels; its predicted class of every test image."""
    train_x, train_y = train
    c = config.baseline_c.get(config.baseline, 1.0)
    if config.baseline == "svc":
        classifier = SVC(C=c, gamma="scale", random_state=seed)
    else:
        classifier = LogisticRegression(max_iter=config.baseline_max_iter, C=c, random_state=seed)
    model = make_pipeline(StandardScaler(), classifier)
    model.fit(train_x.reshape(len(train_x), -1) / 255.0, train_y)
    return model.predict(test_images.reshape(len(test_images), -1) / 255.0)


def baseline_accuracy(config: EvaluateConfig, seed: int, train: Split, test: Split) -> float:
    """Fit the classical baseline on train pixels, score it on test pixels."""
    test_x, test_y = test
    return float((baseline_predictions(config, seed, train, test_x) == test_y).mean())


def evaluation_report(
    scores: TestScores, baseline: dict[str, Any], config: EvaluateConfig, seed: int
) -> dict[str, Any]:
    """`reports/evaluation.json`: the details behind the headline, unrounded."""
    return {
        "test": {
            "n": scores.n,
            "accuracy": scores.accuracy,
            "accuracy_ci": list(scores.interval),
            "macro_f1": scores.macro_f1,
            "ece": scores.ece,
            "per_class": as_dicts(scores.per_class),
            "reliability": [asdict(one_bin) for one_bin in scores.reliability],
            "bootstrap": {
                "method": scores.interval_method,
                "samples": config.bootstrap_samples,
                "confidence": config.confidence,
                "seed": seed,
            },
        },
        "baseline": baseline,
    }


def headline(scores: TestScores, baseline: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """`reports/metrics.json`: the figures people compare between experiments, rounded."""
    return rounded(
        {
            "test": {
                "accuracy": scores.accuracy,
                "macro_f1": scores.macro_f1,
                "accuracy_ci": list(scores.interval),
                "ece": scores.ece,
            },
            "baseline": {"name": baseline["name"], "accuracy": baseline["accuracy"]},
            **headline_from_reports(layout),
        }
    )


def rounded(value: Any, digits: int = HEADLINE_DIGITS) -> Any:
    """`value` with every float inside it (dicts and lists included) rounded to `digits`."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item, digits) for item in value]
    return value


def evaluate(params: Params, layout: Layout | None = None) -> dict[str, Any]:
    """Score the exported model and the baseline on the test split; write the reports."""
    layout = layout or Layout.discover()
    config = params.evaluate
    network, card = load_model(layout.models_dir)
    test_x, test_y = load_split("test", layout.packed_dir)
    probabilities = predict(network, card.preprocessing(), test_x)
    classes = card.classes
    scores = score_test(probabilities, test_y, classes, config, params.seed)
    predicted = probabilities.argmax(axis=1)
    layout.confusion_file.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {"actual": [classes[i] for i in test_y], "predicted": [classes[i] for i in predicted]}
    ).to_csv(layout.confusion_file, index=False, lineterminator="\n")
    save_figure(
        confusion_figure(scores.confusion, classes), layout.evaluation_plots / "confusion.png"
    )
    save_figure(
        reliability_figure(scores.reliability, scores.ece),
        layout.evaluation_plots / "reliability.png",
    )

    train = load_split("train", layout.packed_dir)
    baseline_predicted = baseline_predictions(config, params.seed, train, test_x)
    baseline = {
        "name": config.baseline,
        "accuracy": float((baseline_predicted == test_y).mean()),
        "macro_f1": macro_f1(per_class_scores(test_y, baseline_predicted, classes)),
    }
    metrics = headline(scores, baseline, layout)
    write_json(layout.metrics_file, metrics)
    write_json(layout.evaluation_report, evaluation_report(scores, baseline, config, params.seed))
    return metrics


def headline_from_reports(layout: Layout) -> dict[str, Any]:
    """The training and search figures people compare between experiments, from their reports."""
    headline: dict[str, Any] = {}
    if layout.train_report.exists():
        train = read_json(layout.train_report)
        headline["val"] = {"accuracy": train.get("val_acc"), "gap": train.get("train_val_gap")}
    if layout.tune_summary.exists():
        tune = read_json(layout.tune_summary)
        if tune.get("enabled"):
            headline["tune"] = {
                "best_val_acc": tune.get("best_val_acc"),
                "trials": tune.get("trials"),
            }
    return headline


def summary_line(metrics: dict[str, Any], confidence: float | None = None) -> str:
    """One line: the test figures with the interval, then the baseline (`make run` prints it)."""
    test, baseline = metrics["test"], metrics["baseline"]
    low, high = test["accuracy_ci"]
    level = f"{confidence * 100:g}% CI" if confidence is not None else "CI"
    return (
        f"test accuracy {test['accuracy']:.4f} ({level} {low:.4f}-{high:.4f}), "
        f"macro-F1 {test['macro_f1']:.4f}, ECE {test['ece']:.3f} | "
        f"baseline ({baseline['name']}) {baseline['accuracy']:.4f}"
    )


def main() -> None:
    layout = Layout.discover()
    if sys.argv[1:] == ["--show"]:  # print the last run's result without recomputing (make run)
        details = read_json(layout.evaluation_report) if layout.evaluation_report.exists() else {}
        confidence = details.get("test", {}).get("bootstrap", {}).get("confidence")
        print(summary_line(read_json(layout.metrics_file), confidence))
        return
    params = load_params_or_exit(layout.params_file)
    print(summary_line(evaluate(params, layout), params.evaluate.confidence))


if __name__ == "__main__":
    stage_main(
        main, options={"--show": "print the last result (reports/metrics.json); compute nothing"}
    )
