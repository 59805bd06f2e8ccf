"""Classification metrics with their uncertainty, in numpy only (no torch, no scikit-learn).

Used by the evaluate stage (the test split's figures) and by the promotion gate (a candidate
against the champion on the same images), so both compute a figure the same way:

- :func:`per_class_scores` and :func:`macro_f1`: precision, recall and F1 per class, and their
  unweighted mean over the classes (a rare class counts as much as a common one);
- :func:`bootstrap_interval`: a seeded percentile bootstrap interval of accuracy (test images
  resampled with replacement);
- :func:`paired_bootstrap`: the difference in accuracy between two models on the *same* images,
  resampled in pairs, so the images both get right or both get wrong do not widen the interval;
- :func:`calibration`: expected calibration error (ECE) over equal-width confidence bins, and the
  bins themselves for a reliability diagram.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[actual, predicted] over `n_classes` classes."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predicted)), 1)
    return counts


def per_class_scores(
    labels: np.ndarray, predicted: np.ndarray, classes: list[str]
) -> dict[str, ClassScores]:
    """Precision, recall, F1 and support of every class (0 where a ratio has no denominator)."""
    counts = confusion_matrix(labels, predicted, len(classes))
    true_positive = np.diag(counts).astype(float)
    predicted_as = counts.sum(axis=0)
    support = counts.sum(axis=1)
    precision = np.divide(
        true_positive, predicted_as, out=np.zeros_like(true_positive), where=predicted_as > 0
    )
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    return {
        name: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(classes)
    }


def macro_f1(scores: dict[str, ClassScores]) -> float:
    """The mean F1 over the classes present in the labels (support > 0)."""
    present = [score.f1 for score in scores.values() if score.support > 0]
    return float(np.mean(present)) if present else 0.0


def as_dicts(scores: dict[str, ClassScores]) -> dict[str, dict[str, float]]:
    return {name: asdict(score) for name, score in scores.items()}


RESAMPLE_CHUNK = 4_000_000  # indices drawn at once (32 MB): 100 000 resamples of 10 000 images
# in one draw would need 8 GB


def _resample_means(values: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """The mean of `values` over `samples` seeded resamples with replacement (rows of indices),
    drawn in chunks of rows so memory stays bounded; the same seed gives the same means."""
    rng = np.random.default_rng(seed)
    rows = max(1, RESAMPLE_CHUNK // max(len(values), 1))
    means = np.empty(samples)
    for start in range(0, samples, rows):
        stop = min(start + rows, samples)
        indices = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[indices].mean(axis=1)
    return means


def bootstrap_interval(
    correct: np.ndarray, samples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy from a boolean array (one entry per image)."""
    if len(correct) == 0:
        raise ValueError("bootstrap_interval: no images to resample")
    means = _resample_means(np.asarray(correct, dtype=float), samples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def accuracy_interval(
    correct: np.ndarray, samples: int, confidence: float, seed: int
) -> tuple[float, float, str]:
    """The accuracy interval and how it was found: the percentile bootstrap, unless every image is
    right (or every one wrong). Then each resample has the same accuracy and the bootstrap gives
    [1, 1], a certainty 270 images cannot give; the exact (Clopper-Pearson) binomial interval is
    used instead: 270 of 270 right gives [0.9864, 1]."""
    values = np.asarray(correct, dtype=bool)
    right, total = int(values.sum()), len(values)
    if total and right in (0, total):
        from scipy.stats import beta

        tail = (1 - confidence) / 2
        low = 0.0 if right == 0 else float(beta.ppf(tail, right, total - right + 1))
        high = 1.0 if right == total else float(beta.ppf(1 - tail, right + 1, total - right))
        return low, high, "clopper-pearson"
    return (*bootstrap_interval(values, samples, confidence, seed), "bootstrap")


@dataclass(frozen=True)
class PairedDifference:
    """accuracy(a) - accuracy(b) on the same images, with its bootstrap distribution's summary."""

    difference: float
    low: float  # lower end of the two-sided `confidence` interval
    high: float
    worse_probability: float  # share of resamples in which a trails b by more than the margin


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    samples: int,
    confidence: float,
    seed: int,
    margin: float = 0.0,
) -> PairedDifference:
    """Resample the images (the same rows for both models) and summarize acc(a) - acc(b)."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(
            f"paired_bootstrap: need two equal, non-empty arrays, got {a.shape}, {b.shape}"
        )
    differences = _resample_means(a - b, samples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return PairedDifference(
        float(a.mean() - b.mean()),
        float(low),
        float(high),
        float((differences < -margin).mean()),
    )


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    count: int
    confidence: float  # mean top-class probability of the bin's images (0 when empty)
    accuracy: float  # share of the bin's images predicted correctly (0 when empty)


def calibration(
    probabilities: np.ndarray, labels: np.ndarray, bins: int
) -> tuple[float, list[CalibrationBin]]:
    """Expected calibration error over `bins` equal-width bins of top-class confidence.

    ECE = sum over bins of (bin size / N) * |accuracy - mean confidence| (Guo et al. 2017).
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # a confidence of exactly 1.0 belongs to the last bin; each bin is (low, high]
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table: list[CalibrationBin] = []
    error = 0.0
    for index in range(bins):
        members = which == index
        count = int(members.sum())
        mean_confidence = float(confidence[members].mean()) if count else 0.0
        accuracy = float(correct[members].mean()) if count else 0.0
        error += count / max(len(labels), 1) * abs(accuracy - mean_confidence)
        table.append(
            CalibrationBin(
                float(edges[index]), float(edges[index + 1]), count, mean_confidence, accuracy
            )
        )
    return float(error), table
