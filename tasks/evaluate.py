"""evaluate: score the exported model on the test split beside a classical baseline.

Run on its own with ``python -m tasks.evaluate`` (after train).

The baseline (logistic regression or an RBF SVC on raw pixels, `evaluate.baseline`) is trained on
the same train split and scored on the same test split in the same run, so the comparison is
fair. Writes `reports/metrics.json`, the run's headline figures and the only file declared as DVC
metrics (so `dvc exp show` and `dvc metrics diff` compare a few columns): test accuracy, the
baseline, the exported epoch's validation accuracy and train/validation gap (from
`reports/train.json`) and the search's best validation accuracy (from `reports/tune/summary.json`).
Details go to `reports/evaluation.json` (test size, per-class accuracy) and
`reports/plots/confusion.csv` (DVC plot).
"""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from tasks.core.config import EvaluateConfig, Params, load_params_or_exit
from tasks.core.io import read_json, write_json
from tasks.core.layout import Layout
from tasks.core.runner import stage_main
from tasks.data.packed import Split, load_split
from tasks.modeling.artifact import load_model, predict
from tasks.modeling.checks import class_accuracies


def baseline_accuracy(config: EvaluateConfig, seed: int, train: Split, test: Split) -> float:
    """Fit the classical baseline on train pixels, score it on test pixels."""
    (train_x, train_y), (test_x, test_y) = train, test
    c = config.baseline_c.get(config.baseline, 1.0)
    if config.baseline == "svc":
        classifier = SVC(C=c, gamma="scale", random_state=seed)
    else:
        classifier = LogisticRegression(max_iter=config.baseline_max_iter, C=c, random_state=seed)
    model = make_pipeline(StandardScaler(), classifier)
    model.fit(train_x.reshape(len(train_x), -1) / 255.0, train_y)
    return float(model.score(test_x.reshape(len(test_x), -1) / 255.0, test_y))


def evaluate(params: Params, layout: Layout | None = None) -> dict[str, Any]:
    """Score the exported model and the baseline on the test split; write the reports."""
    layout = layout or Layout.discover()
    network, card = load_model(layout.models_dir)
    test_x, test_y = load_split("test", layout.packed_dir)
    probabilities = predict(network, card.preprocessing(), test_x)
    predicted = probabilities.argmax(axis=1)
    accuracy = float((predicted == test_y).mean())
    classes = card.classes
    layout.confusion_file.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {"actual": [classes[i] for i in test_y], "predicted": [classes[i] for i in predicted]}
    ).to_csv(layout.confusion_file, index=False, lineterminator="\n")
    per_class = class_accuracies(predicted, test_y, classes)
    train = load_split("train", layout.packed_dir)
    metrics: dict[str, Any] = {
        "test": {"accuracy": accuracy},
        "baseline": {
            "name": params.evaluate.baseline,
            "accuracy": baseline_accuracy(params.evaluate, params.seed, train, (test_x, test_y)),
        },
        **headline_from_reports(layout),
    }
    write_json(layout.metrics_file, metrics)
    write_json(
        layout.evaluation_report, {"test": {"n": len(test_y), "per_class_accuracy": per_class}}
    )
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


def summary_line(metrics: dict[str, Any]) -> str:
    return (
        f"test accuracy {metrics['test']['accuracy']:.4f} | baseline "
        f"({metrics['baseline']['name']}) {metrics['baseline']['accuracy']:.4f}"
    )


def main() -> None:
    layout = Layout.discover()
    if sys.argv[1:] == ["--show"]:  # print the last run's result without recomputing (make run)
        print(summary_line(read_json(layout.metrics_file)))
        return
    params = load_params_or_exit(layout.params_file)
    print(summary_line(evaluate(params, layout)))


if __name__ == "__main__":
    stage_main(
        main, options={"--show": "print the last result (reports/metrics.json); compute nothing"}
    )
