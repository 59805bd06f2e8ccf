"""Classification metrics with their uncertainty, in numpy only (no torch, no scikit-learn).

Used by the evaluate stage (the test split's figures) and by the promotion gate (a candidate
against the champion on the same images):

- :func:`per_class_scores` and :func:`macro_f1`: precision, recall and F1 per class, and their
  unweighted mean over the classes (a rare class counts as much as a common one);
- :func:`bootstrap_interval`: a seeded percentile bootstrap interval of accuracy (test images
  resampled with replacement);
- :func:`paired_score_test`: two models on the *same* images, a one-sided test that the first's
  accuracy is above the second's minus a margin, from the images they disagree about (Tango's
  score test; McNemar's at margin 0): the promotion gate's one rule (`tasks.registry.gate`);
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


@dataclass(frozen=True)
class PairedTest:
    """Model a against model b on the same images: a one-sided test that acc(a) - acc(b) is
    above `-margin` (`margin` > 0: non-inferiority; 0: superiority), from the discordant pairs.
    """

    images: int
    wins: int  # images a gets right and b gets wrong
    losses: int  # images a gets wrong and b gets right
    margin: float
    confidence: float
    statistic: float  # the score statistic at difference -margin
    lower_bound: float  # one-sided `confidence` lower bound of acc(a) - acc(b)
    passed: bool  # statistic > the normal quantile: acc(a) - acc(b) > -margin shown

    @property
    def difference(self) -> float:
        return (self.wins - self.losses) / self.images


def score_statistic(
    wins: np.ndarray | int, losses: np.ndarray | int, images: np.ndarray | int, null: float
) -> np.ndarray:
    """Tango's (1998) score statistic for H0: acc(a) - acc(b) = `null` on paired images
    (elementwise over arrays of counts): (wins - losses - n null) / its standard error under H0,
    with the discordance rates at their maximum-likelihood values under H0. At `null` = 0 it is
    McNemar's statistic (wins - losses) / sqrt(wins + losses). 0 where the variance is 0 (no
    discordant image and `null` = 0: no evidence either way)."""
    b, c, n = (np.asarray(x, dtype=float) for x in (wins, losses, images))
    quadratic_b = -(b + c) + null * (2 * n - b + c)
    quadratic_c = -c * null * (1 - null)
    root = np.sqrt(np.maximum(quadratic_b**2 - 8 * n * quadratic_c, 0.0))
    p_losses = (-quadratic_b + root) / (4 * n)  # P(a wrong, b right) under H0
    variance = n * (2 * p_losses + null - null**2)
    numerator = b - c - n * null
    safe = np.where(variance > 1e-12, variance, 1.0)
    return np.where(variance > 1e-12, numerator / np.sqrt(safe), 0.0)


def paired_score_test(
    correct_a: np.ndarray, correct_b: np.ndarray, margin: float, confidence: float
) -> PairedTest:
    """Is acc(a) - acc(b) > -`margin`, at one-sided `confidence`? Tango's score test (see
    :func:`score_statistic`) on the images the two models disagree about; the lower bound is
    the test inverted (the smallest difference it does not reject, by bisection)."""
    from scipy.stats import norm

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(
            f"paired_score_test: need two equal, non-empty arrays, got {a.shape}, {b.shape}"
        )
    n, wins, losses = len(a), int((a & ~b).sum()), int((~a & b).sum())
    critical = float(norm.ppf(confidence))
    statistic = float(score_statistic(wins, losses, n, -margin))
    low, high = -1.0, (wins - losses) / n  # the statistic falls from +inf to <= 0 between them
    for _ in range(60):
        middle = (low + high) / 2
        if float(score_statistic(wins, losses, n, middle)) > critical:
            low = middle
        else:
            high = middle
    return PairedTest(n, wins, losses, margin, confidence, statistic, high, statistic > critical)
