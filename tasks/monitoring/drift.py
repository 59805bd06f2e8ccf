"""The drift tests: does a sample of served predictions still look like the reference?

Each test compares one aspect of the served sample with the reference (`tasks.monitoring.
reference`) and says drift or not; the verdict is drift when any test says so:

- image statistics (the decoded upload's pixel mean and std, its width and height): a
  two-sample Kolmogorov-Smirnov test (drift when p < `monitor.p_value`) and the population
  stability index (drift when PSI > `monitor.psi_threshold`);
- the predicted labels: a chi-square test of homogeneity on the 2 x classes table of counts
  (the reference's shares are themselves a sample, so not a goodness-of-fit test against them);
- the mean confidence: drift when it fell by more than `monitor.confidence_drop`;
- the network's embeddings: a kernel two-sample test (MMD with an RBF kernel, its bandwidth by
  the median heuristic, the p-value by a seeded permutation test).

Fewer records than `monitor.min_records` give no verdict at all; a model test without enough
records of the champion (or a log without embeddings) is reported as skipped. numpy and scipy
only: whatever needs the network (`reference`) hands these functions plain arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from tasks.core.config_release import MonitorConfig

IMAGE_FEATURES = ("mean", "std", "width", "height")  # what the prediction log records of an image
MAX_PSI_BINS = 10  # deciles of the reference, the usual PSI, once samples are large enough
PSI_NOISE_SHARE = 0.25  # PSI's own sampling noise may use at most this share of the threshold
PSI_PSEUDOCOUNT = 0.5  # added to every bin's count, so an empty bin gives no log(0)
PERMUTATION_CHUNK = 256  # permutations evaluated per matrix product (memory: n x chunk floats)


@dataclass(frozen=True)
class Sample:
    """What drift is judged on, for the reference or the served side. The arrays need not be
    equally long: the served side's model arrays hold only the records of the champion."""

    features: dict[str, np.ndarray]  # image statistic (IMAGE_FEATURES) -> one value per image
    labels: np.ndarray  # predicted class names
    confidences: np.ndarray  # probability of the predicted class
    embeddings: np.ndarray | None  # (N, D) penultimate-layer activations; None: not recorded

    @property
    def size(self) -> int:
        """The number of images (records) the sample describes."""
        return len(next(iter(self.features.values()))) if self.features else 0


@dataclass(frozen=True)
class DriftTest:
    """One test's outcome. A test with a p-value has `statistic` and `p_value`; a measure
    (PSI, the confidence drop) has `value`; both have the `threshold` they were judged by."""

    name: str
    drift: bool | None  # None: skipped (`note` says why)
    threshold: float
    statistic: float | None = None
    p_value: float | None = None
    value: float | None = None
    reference: int = 0  # sample sizes the test saw
    served: int = 0
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        fields = {
            "name": self.name,
            "drift": self.drift,
            "threshold": self.threshold,
            "samples": {"reference": self.reference, "served": self.served},
        }
        for key in ("statistic", "p_value", "value"):
            number = getattr(self, key)
            if number is not None:
                fields[key] = round(float(number), 6) + 0.0  # no -0.0
        if self.note:
            fields["note"] = self.note
        return fields


@dataclass(frozen=True)
class Verdict:
    drift: bool | None  # None: too few records to tell
    tests: list[DriftTest]
    reason: str  # one line for a person


def ks_test(name: str, reference: np.ndarray, served: np.ndarray, p_threshold: float) -> DriftTest:
    """Two-sample Kolmogorov-Smirnov test of one image statistic."""
    result = stats.ks_2samp(reference, served)
    p_value = float(result.pvalue)
    return DriftTest(
        f"ks:{name}",
        p_value < p_threshold,
        p_threshold,
        statistic=float(result.statistic),
        p_value=p_value,
        reference=len(reference),
        served=len(served),
    )


def psi_bins(reference_size: int, served_size: int, threshold: float) -> int:
    """How many quantile bins PSI may use on samples of these sizes.

    For two samples of one distribution PSI is about (bins - 1) * (1/n_ref + 1/n_served) on
    average (it behaves like a chi-square statistic), so ten bins on 50 records would average
    0.2, the usual threshold, with no drift at all. The bins are as many as keep that noise
    under PSI_NOISE_SHARE of the threshold: against 500 reference images, 3 bins for 50 served
    records, 5 for 100, deciles from about 300 on.
    """
    noise_per_bin = 1 / reference_size + 1 / served_size
    fitting = 1 + int(PSI_NOISE_SHARE * threshold / noise_per_bin)
    return int(np.clip(fitting, 2, MAX_PSI_BINS))


def psi(reference: np.ndarray, served: np.ndarray, bins: int) -> float:
    """The population stability index, sum((s - r) * ln(s / r)) over the reference's quantile
    bins. Values beyond the reference's largest get a bin of their own (a constant reference,
    such as the width of 8 px digits, then still sees 16 px uploads); bins empty on both sides
    are left out and a pseudocount keeps a bin empty on one side finite."""
    cuts = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])
    cuts = np.unique(np.append(cuts, np.nextafter(np.max(reference), np.inf)))
    counts = [
        np.bincount(np.searchsorted(cuts, values, side="right"), minlength=len(cuts) + 1)
        for values in (reference, served)
    ]
    reference_counts, served_counts = (c[(counts[0] + counts[1]) > 0] for c in counts)
    reference_share = _smoothed_shares(reference_counts)
    served_share = _smoothed_shares(served_counts)
    return float(np.sum((served_share - reference_share) * np.log(served_share / reference_share)))


def _smoothed_shares(counts: np.ndarray) -> np.ndarray:
    padded = counts + PSI_PSEUDOCOUNT
    return padded / padded.sum()


def psi_test(name: str, reference: np.ndarray, served: np.ndarray, threshold: float) -> DriftTest:
    bins = psi_bins(len(reference), len(served), threshold)
    value = psi(reference, served, bins)
    return DriftTest(
        f"psi:{name}",
        value > threshold,
        threshold,
        value=value,
        reference=len(reference),
        served=len(served),
        note=f"{bins} quantile bins of the reference",
    )


def label_test(
    reference: np.ndarray, served: np.ndarray, classes: list[str], p_threshold: float
) -> DriftTest:
    """Chi-square test of homogeneity of the predicted-label counts (classes predicted on
    neither side are left out; a label outside `classes` gets its own column)."""
    names = list(classes) + sorted(set(map(str, served)) - set(classes))
    table = np.array([[np.sum(side == name) for name in names] for side in (reference, served)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:  # one class predicted on both sides: nothing could have shifted
        statistic, p_value = 0.0, 1.0
    else:
        result = stats.chi2_contingency(table)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return DriftTest(
        "chi2:predicted_label",
        p_value < p_threshold,
        p_threshold,
        statistic=statistic,
        p_value=p_value,
        reference=len(reference),
        served=len(served),
    )


def confidence_test(reference: np.ndarray, served: np.ndarray, max_drop: float) -> DriftTest:
    """Drift when the served mean confidence is below the reference's by more than `max_drop`."""
    before, now = float(np.mean(reference)), float(np.mean(served))
    return DriftTest(
        "confidence_drop",
        before - now > max_drop,
        max_drop,
        value=before - now,
        reference=len(reference),
        served=len(served),
        note=f"mean confidence {before:.4f} (reference) -> {now:.4f} (served)",
    )


def mmd_test(
    reference: np.ndarray,
    served: np.ndarray,
    permutations: int,
    max_samples: int,
    p_threshold: float,
    seed: int,
) -> DriftTest:
    """Kernel two-sample test on embeddings: the unbiased MMD^2 with an RBF kernel whose width is
    the median distance between the pooled points, and its permutation p-value.

    At most `max_samples` points per side (a seeded subsample): the kernel matrix is n^2.
    Every permutation's MMD^2 comes from one matrix product with the split indicators, so 200
    permutations of 1000 points cost about as much as building the kernel.
    """
    generator = np.random.default_rng(seed)
    x = _subsample(np.asarray(reference, np.float64), max_samples, generator)
    y = _subsample(np.asarray(served, np.float64), max_samples, generator)
    pooled = np.concatenate([x, y])
    squared = np.maximum(_squared_distances(pooled), 0.0)
    n, first = len(pooled), len(x)
    median = float(np.median(squared[~np.eye(n, dtype=bool)]))
    kernel = np.exp(-squared / (2.0 * median if median > 0 else 1.0))
    row_sums = kernel.sum(axis=1)
    observed = _mmd_of_splits(kernel, row_sums, first, np.arange(n)[:, None] < first)[0]
    exceeded = 0
    for start in range(0, permutations, PERMUTATION_CHUNK):
        count = min(PERMUTATION_CHUNK, permutations - start)
        orders = np.argsort(generator.random((n, count)), axis=0)  # a permutation per column
        members = orders < first
        exceeded += int(np.sum(_mmd_of_splits(kernel, row_sums, first, members) >= observed))
    p_value = (1 + exceeded) / (1 + permutations)
    return DriftTest(
        "mmd:embedding",
        p_value < p_threshold,
        p_threshold,
        statistic=float(observed),
        p_value=p_value,
        reference=len(x),
        served=len(y),
        note=f"RBF kernel, bandwidth {np.sqrt(median):.4g} (median distance), "
        f"{permutations} permutations",
    )


def _subsample(points: np.ndarray, limit: int, generator: np.random.Generator) -> np.ndarray:
    if len(points) <= limit:
        return points
    return points[np.sort(generator.choice(len(points), limit, replace=False))]


def _squared_distances(points: np.ndarray) -> np.ndarray:
    norms = np.einsum("ij,ij->i", points, points)
    return norms[:, None] + norms[None, :] - 2.0 * points @ points.T


def _mmd_of_splits(
    kernel: np.ndarray, row_sums: np.ndarray, first: int, members: np.ndarray
) -> np.ndarray:
    """Unbiased MMD^2 for each column of `members` (n x P booleans: True = in the first sample,
    `first` of them per column). The kernel's diagonal (1 for RBF) is left out of the sums."""
    inside = members.astype(np.float64)
    second = len(kernel) - first
    towards_first = kernel @ inside  # (n, P): each point's kernel sum over the first sample
    within_first = np.sum(inside * towards_first, axis=0) - first
    across = np.sum(inside * (row_sums[:, None] - towards_first), axis=0)
    within_second = np.sum((1 - inside) * (row_sums[:, None] - towards_first), axis=0) - second
    return (
        within_first / (first * (first - 1))
        + within_second / (second * (second - 1))
        - 2.0 * across / (first * second)
    )


def skipped(name: str, threshold: float, note: str, served: int = 0) -> DriftTest:
    return DriftTest(name, None, threshold, served=served, note=note)


def image_tests(reference: Sample, served: Sample, config: MonitorConfig) -> list[DriftTest]:
    """KS and PSI for each image statistic both samples hold."""
    tests = []
    for feature in IMAGE_FEATURES:
        if feature in reference.features and feature in served.features:
            before = np.asarray(reference.features[feature], np.float64)
            now = np.asarray(served.features[feature], np.float64)
            tests.append(ks_test(feature, before, now, config.p_value))
            tests.append(psi_test(feature, before, now, config.psi_threshold))
    return tests


def model_tests(
    reference: Sample, served: Sample, classes: list[str], config: MonitorConfig, seed: int
) -> list[DriftTest]:
    """The predicted labels, the confidence and the embeddings, when there are records enough."""
    count = len(served.labels)
    if count < config.min_records:
        note = f"{count} record(s) of the champion, fewer than monitor.min_records"
        return [
            skipped("chi2:predicted_label", config.p_value, note, count),
            skipped("confidence_drop", config.confidence_drop, note, count),
            skipped("mmd:embedding", config.p_value, note, count),
        ]
    tests = [
        label_test(reference.labels, served.labels, classes, config.p_value),
        confidence_test(reference.confidences, served.confidences, config.confidence_drop),
    ]
    if served.embeddings is None or reference.embeddings is None or len(served.embeddings) < 2:
        note = "the prediction log records no embeddings"
        tests.append(skipped("mmd:embedding", config.p_value, note, count))
    elif served.embeddings.shape[1] != reference.embeddings.shape[1]:
        note = (
            f"the logged embeddings have {served.embeddings.shape[1]} dimensions, the "
            f"champion's {reference.embeddings.shape[1]}"
        )
        tests.append(skipped("mmd:embedding", config.p_value, note, count))
    else:
        tests.append(
            mmd_test(
                reference.embeddings,
                served.embeddings,
                config.mmd_permutations,
                config.mmd_max_samples,
                config.p_value,
                seed,
            )
        )
    return tests


def too_few(records: int, config: MonitorConfig) -> Verdict | None:
    """The no-verdict verdict when `records` are fewer than `monitor.min_records`, else None."""
    if records >= config.min_records:
        return None
    return Verdict(
        None,
        [],
        f"no verdict: {records} record(s), fewer than monitor.min_records = {config.min_records}",
    )


def judge(
    reference: Sample, served: Sample, classes: list[str], config: MonitorConfig, seed: int
) -> Verdict:
    """Every test, and the verdict: drift when any test says drift; None with too few records."""
    if (nothing := too_few(served.size, config)) is not None:
        return nothing
    tests = image_tests(reference, served, config) + model_tests(
        reference, served, classes, config, seed
    )
    drifted = [test.name for test in tests if test.drift]
    if drifted:
        return Verdict(True, tests, f"drift in {', '.join(drifted)} ({served.size} records)")
    ran = sum(test.drift is not None for test in tests)
    return Verdict(False, tests, f"no drift: {ran} test(s) on {served.size} records")
