"""The drift verdict: does a sample of served predictions still look like the reference?

Each test compares one aspect of the served sample with the reference (`tasks.monitoring.
reference`, the champion's registered test images) and gives a p-value:

- each image statistic (the decoded upload's pixel mean and std, its width and height): a
  two-sample Kolmogorov-Smirnov test;
- the predicted labels, two ways (the reference's shares are themselves a sample, so neither
  is a goodness-of-fit test against them): a chi-square test of homogeneity on the 2 x classes
  table of counts, which sees many classes shifting a little, and each class's share on its own
  (Fisher's exact test of the 2 x 2 table, that class against the rest; the smallest p times the
  number of classes, Bonferroni), which sees one class vanishing or surging: with ten classes,
  one class absent from 200 records moves chi-square (9 degrees of freedom) to p ~ 0.01 only,
  while that class's own test gives p ~ 1e-6;
- the confidence: a one-sided Mann-Whitney U test (are served confidences lower?);
- the network's embeddings: a kernel two-sample test (MMD with an RBF kernel, its bandwidth by
  the median heuristic, the p-value by a seeded permutation test).

One family-wise decision. The p-values of every test that ran (eight at most) are adjusted by
Holm's step-down method: sorted p_(1) <= ... <= p_(m), the adjusted p_(i) is the running maximum
of min(1, (m - i + 1) p_(i)); a test is significant when its adjusted p <= `monitor.
false_alarm_rate`. Holm keeps the chance of any significant test on clean traffic at or below
that rate whatever the dependence between the tests (they share the records), and rejects at
least what Bonferroni rejects. Significance alone is not drift: with many records a shift too
small to matter is significant, so two tests also need an effect size above a threshold:

- an image statistic drifts when its KS test is significant AND its population stability index
  is above `monitor.psi_threshold`;
- the confidence drifts when Mann-Whitney is significant AND the mean confidence fell by more
  than `monitor.confidence_drop`.

The label, class-share and embedding tests drift when significant. The AND only removes alarms, so
the rate of false alarms per check stays at most `monitor.false_alarm_rate`;
`benchmarks/monitor_false_alarms` measures it, and the detection rates, on the champion. The
verdict is drift when any test drifts. Fewer records than `monitor.min_records` give no verdict at
all; a model test without enough records of the champion (or a log without embeddings) is reported
as skipped and is not part of the family. numpy and scipy only: whatever needs the network hands
these plain arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

from tasks.core.config import MonitorConfig
from tasks.monitoring.mmd import mmd_permutation_test
from tasks.monitoring.psi import psi, psi_bins

IMAGE_FEATURES = ("mean", "std", "width", "height")  # what the prediction log records of an image


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
    """One test's outcome: its p-value (raw and Holm-adjusted) and, for the image statistics and
    the confidence, the effect size that must also exceed its threshold."""

    name: str
    drift: bool | None  # None: skipped (`note` says why)
    level: float  # the family-wise level the adjusted p is compared with
    statistic: float | None = None
    p_value: float | None = None
    adjusted_p: float | None = None  # Holm's, over every test of the check that ran
    effect: str | None = None  # the effect size's name: "psi" or "mean_drop"
    effect_value: float | None = None
    effect_threshold: float | None = None
    reference: int = 0  # sample sizes the test saw
    served: int = 0
    note: str = ""

    @property
    def significant(self) -> bool:
        return self.adjusted_p is not None and self.adjusted_p <= self.level

    def decided(self, adjusted_p: float) -> DriftTest:
        """This test with its adjusted p and its verdict: significant AND (when it has an effect
        size) the effect above its threshold."""
        large = self.effect_value is None or self.effect_value > (self.effect_threshold or 0.0)
        return replace(self, adjusted_p=adjusted_p, drift=bool(adjusted_p <= self.level and large))

    def as_json(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "name": self.name,
            "drift": self.drift,
            "level": self.level,
            "samples": {"reference": self.reference, "served": self.served},
        }
        for key in ("statistic", "p_value", "adjusted_p", "effect_value", "effect_threshold"):
            number = getattr(self, key)
            if number is not None:
                fields[key] = float(f"{float(number):.6g}") + 0.0  # no -0.0; tiny p kept
        if self.effect:
            fields["effect"] = self.effect
        if self.note:
            fields["note"] = self.note
        return fields


@dataclass(frozen=True)
class Verdict:
    drift: bool | None  # None: too few records to tell
    tests: list[DriftTest]
    reason: str  # one line for a person


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest p times the
    number of p-values not smaller than it (m - i + 1), made non-decreasing, capped at 1."""
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def ks_test(name: str, reference: np.ndarray, served: np.ndarray, level: float) -> DriftTest:
    """Two-sample Kolmogorov-Smirnov test of one image statistic (its PSI is added by
    :func:`image_tests`)."""
    result = stats.ks_2samp(reference, served)
    return DriftTest(
        f"ks:{name}",
        None,
        level,
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
        reference=len(reference),
        served=len(served),
    )


def with_psi(
    test: DriftTest, reference: np.ndarray, served: np.ndarray, threshold: float
) -> DriftTest:
    """A KS test with its effect size: PSI over as many quantile bins as the sizes allow."""
    bins = psi_bins(len(reference), len(served), threshold)
    return replace(
        test,
        effect="psi",
        effect_value=psi(reference, served, bins),
        effect_threshold=threshold,
        note=f"PSI on {bins} quantile bins of the reference",
    )


def label_test(
    reference: np.ndarray, served: np.ndarray, classes: list[str], level: float
) -> DriftTest:
    """Chi-square test of homogeneity of the predicted-label counts (classes predicted on
    neither side are left out; a label outside `classes` gets its own column)."""
    names = _label_names(classes, served)
    table = np.array([[np.sum(side == name) for name in names] for side in (reference, served)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:  # one class predicted on both sides: nothing could have shifted
        statistic, p_value = 0.0, 1.0
    else:
        result = stats.chi2_contingency(table)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return DriftTest(
        "chi2:predicted_label",
        None,
        level,
        statistic=statistic,
        p_value=p_value,
        reference=len(reference),
        served=len(served),
    )


def class_share_test(
    reference: np.ndarray, served: np.ndarray, classes: list[str], level: float
) -> DriftTest:
    """Each predicted class's share, served against reference: Fisher's exact test of that class
    against the rest, the smallest p-value times the number of classes tested (Bonferroni)."""
    names = _label_names(classes, served)
    sizes = len(reference), len(served)
    smallest, worst = 1.0, ""
    tested = 0
    for name in names:
        counts = int(np.sum(reference == name)), int(np.sum(served == name))
        if counts == (0, 0):
            continue
        tested += 1
        table = [[counts[0], sizes[0] - counts[0]], [counts[1], sizes[1] - counts[1]]]
        p_value = float(stats.fisher_exact(table).pvalue)
        if p_value < smallest:
            smallest, worst = (
                p_value,
                f"{name}: {counts[0] / sizes[0]:.3f} -> {counts[1] / sizes[1]:.3f}",
            )
    return DriftTest(
        "fisher:class_share",
        None,
        level,
        statistic=smallest,
        p_value=min(1.0, smallest * max(tested, 1)),
        reference=sizes[0],
        served=sizes[1],
        note=f"largest shift {worst} (share of records)" if worst else "",
    )


def _label_names(classes: list[str], served: np.ndarray) -> list[str]:
    """The classes, then any served label outside them (each its own column)."""
    return list(classes) + sorted(set(map(str, served)) - set(classes))


def confidence_test(
    reference: np.ndarray, served: np.ndarray, max_drop: float, level: float
) -> DriftTest:
    """One-sided Mann-Whitney U test (served confidences lower than the reference's), with the
    drop of the mean confidence as its effect size, `max_drop` its threshold."""
    before, now = float(np.mean(reference)), float(np.mean(served))
    if np.ptp(np.concatenate([reference, served])) == 0:  # all equal: nothing to rank
        statistic, p_value = float(len(reference) * len(served)) / 2, 1.0
    else:
        result = stats.mannwhitneyu(served, reference, alternative="less")
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return DriftTest(
        "mannwhitney:confidence",
        None,
        level,
        statistic=statistic,
        p_value=p_value,
        effect="mean_drop",
        effect_value=before - now,
        effect_threshold=max_drop,
        reference=len(reference),
        served=len(served),
        note=f"mean confidence {before:.4f} (reference) -> {now:.4f} (served)",
    )


def mmd_test(
    reference: np.ndarray,
    served: np.ndarray,
    permutations: int,
    max_samples: int,
    level: float,
    seed: int,
) -> DriftTest:
    """The kernel two-sample test on embeddings (`tasks.monitoring.mmd`)."""
    result = mmd_permutation_test(reference, served, permutations, max_samples, seed)
    return DriftTest(
        "mmd:embedding",
        None,
        level,
        statistic=result.statistic,
        p_value=result.p_value,
        reference=result.reference,
        served=result.served,
        note=f"RBF kernel, bandwidth {result.bandwidth:.4g} (median distance), "
        f"{permutations} permutations",
    )


def skipped(name: str, level: float, note: str, served: int = 0) -> DriftTest:
    return DriftTest(name, None, level, served=served, note=note)


def image_tests(reference: Sample, served: Sample, config: MonitorConfig) -> list[DriftTest]:
    """KS, with PSI as its effect size, for each image statistic both samples hold."""
    tests = []
    for feature in IMAGE_FEATURES:
        if feature in reference.features and feature in served.features:
            before = np.asarray(reference.features[feature], np.float64)
            now = np.asarray(served.features[feature], np.float64)
            test = ks_test(feature, before, now, config.false_alarm_rate)
            tests.append(with_psi(test, before, now, config.psi_threshold))
    return tests


def model_tests(
    reference: Sample, served: Sample, classes: list[str], config: MonitorConfig, seed: int
) -> list[DriftTest]:
    """The predicted labels, the confidence and the embeddings, when there are records enough."""
    count, level = len(served.labels), config.false_alarm_rate
    names = (
        "chi2:predicted_label",
        "fisher:class_share",
        "mannwhitney:confidence",
        "mmd:embedding",
    )
    if count < config.min_records:
        note = f"{count} record(s) of the champion, fewer than monitor.min_records"
        return [skipped(name, level, note, count) for name in names]
    tests = [
        label_test(reference.labels, served.labels, classes, level),
        class_share_test(reference.labels, served.labels, classes, level),
        confidence_test(reference.confidences, served.confidences, config.confidence_drop, level),
    ]
    if served.embeddings is None or reference.embeddings is None or len(served.embeddings) < 2:
        tests.append(skipped(names[3], level, "the prediction log records no embeddings", count))
    elif served.embeddings.shape[1] != reference.embeddings.shape[1]:
        note = (
            f"the logged embeddings have {served.embeddings.shape[1]} dimensions, the "
            f"champion's {reference.embeddings.shape[1]}"
        )
        tests.append(skipped(names[3], level, note, count))
    else:
        tests.append(
            mmd_test(
                reference.embeddings,
                served.embeddings,
                config.mmd_permutations,
                config.mmd_max_samples,
                level,
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


def decide(tests: list[DriftTest]) -> list[DriftTest]:
    """Every test that ran, adjusted by Holm over all of them and decided (see the module
    docstring); skipped tests stay as they are."""
    ran = [index for index, test in enumerate(tests) if test.p_value is not None]
    adjusted = holm([float(tests[index].p_value or 0.0) for index in ran])
    decided = list(tests)
    for index, value in zip(ran, adjusted, strict=True):
        decided[index] = tests[index].decided(value)
    return decided


def _described(test: DriftTest) -> str:
    text = f"{test.name} (p {test.p_value:.2g}, Holm {test.adjusted_p:.2g}"
    if test.effect is not None:
        text += f", {test.effect} {test.effect_value:.3g} > {test.effect_threshold:.3g}"
    return text + ")"


def judge(
    reference: Sample, served: Sample, classes: list[str], config: MonitorConfig, seed: int
) -> Verdict:
    """Every test, and the family-wise verdict (module docstring); None with too few records."""
    if (nothing := too_few(served.size, config)) is not None:
        return nothing
    tests = decide(
        image_tests(reference, served, config)
        + model_tests(reference, served, classes, config, seed)
    )
    drifted = [_described(test) for test in tests if test.drift]
    if drifted:
        return Verdict(True, tests, f"drift in {', '.join(drifted)} ({served.size} records)")
    ran = sum(test.drift is not None for test in tests)
    small = [test.name for test in tests if test.significant and not test.drift]
    aside = f"; significant but below the effect threshold: {', '.join(small)}" if small else ""
    return Verdict(
        False,
        tests,
        f"no drift: {ran} test(s) on {served.size} records, family-wise level "
        f"{config.false_alarm_rate:g} (Holm){aside}",
    )
