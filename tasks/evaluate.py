"""evaluate: score the exported model on the test split beside a classical baseline.

Run on its own with ``python -m tasks.evaluate`` (after train).

The baseline (logistic regression or an RBF SVC on raw pixels, `evaluate.baseline`) is trained on
the same train split and scored on the same test split in the same run, so the comparison is
fair. Writes `reports/metrics.json` (DVC metrics) and `reports/plots/confusion.csv` (DVC plot).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from tasks.cli import stage_main
from tasks.config import Params, load_params_or_exit
from tasks.datasets import PACKED_DIR, load_split
from tasks.io import read_json, write_json
from tasks.models import MODEL_DIR, load_model, normalize, predict

METRICS_FILE = Path("reports/metrics.json")
CONFUSION_FILE = Path("reports/plots/confusion.csv")


def baseline_accuracy(name: str, seed: int, packed_dir: Path = PACKED_DIR) -> float:
    """Fit the classical baseline on train pixels, score it on test pixels."""
    train_x, train_y = load_split("train", packed_dir)
    test_x, test_y = load_split("test", packed_dir)
    if name == "svc":
        classifier = SVC(C=10.0, gamma="scale", random_state=seed)
    else:
        classifier = LogisticRegression(max_iter=3000, C=1.0, random_state=seed)
    model = make_pipeline(StandardScaler(), classifier)
    model.fit(train_x.reshape(len(train_x), -1) / 255.0, train_y)
    return float(model.score(test_x.reshape(len(test_x), -1) / 255.0, test_y))


def evaluate(
    params: Params, model_dir: Path = MODEL_DIR, packed_dir: Path = PACKED_DIR
) -> dict[str, Any]:
    network, info = load_model(model_dir)
    test_x, test_y = load_split("test", packed_dir)
    norm = info["normalization"]
    probabilities = predict(network, normalize(test_x, norm["mean"], norm["std"]))
    predicted = probabilities.argmax(axis=1)
    accuracy = float((predicted == test_y).mean())
    classes = info["classes"]
    CONFUSION_FILE.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {"actual": [classes[i] for i in test_y], "predicted": [classes[i] for i in predicted]}
    ).to_csv(CONFUSION_FILE, index=False, lineterminator="\n")
    per_class = {classes[c]: float((predicted[test_y == c] == c).mean()) for c in np.unique(test_y)}
    metrics = {
        "test": {"accuracy": accuracy, "n": len(test_y), "per_class_accuracy": per_class},
        "baseline": {
            "name": params.evaluate.baseline,
            "accuracy": baseline_accuracy(params.evaluate.baseline, params.seed, packed_dir),
        },
    }
    write_json(METRICS_FILE, metrics)
    return metrics


def summary_line(metrics: dict[str, Any]) -> str:
    return (
        f"test accuracy {metrics['test']['accuracy']:.4f} | baseline "
        f"({metrics['baseline']['name']}) {metrics['baseline']['accuracy']:.4f}"
    )


def main() -> None:
    if sys.argv[1:] == ["--show"]:  # print the last run's result without recomputing (make run)
        print(summary_line(read_json(METRICS_FILE)))
        return
    params = load_params_or_exit()
    print(summary_line(evaluate(params)))


if __name__ == "__main__":
    stage_main(main)
