"""The promotion gate: the rules a candidate must meet to become the champion, each with a reason.

1. accuracy: test accuracy >= `gate.min_accuracy`;
2. behaviour, the checks of `tests/model/test_behaviour.py` (`tasks.modeling.checks`):
   predictions kept under shifts and rotations of half the trained ranges (`augment.translate`,
   `augment.rotation`) for at least `gate.min_invariance` of the images, every class at least
   `gate.min_class_accuracy`, and (if `gate.require_beats_baseline`) better than the same-run
   classical baseline;
3. no regression: on the *champion's* test set, a seeded paired bootstrap of accuracy(candidate)
   - accuracy(champion), a non-inferiority rule: the candidate passes only if at most
   1 - `gate.confidence` of the resamples have it trailing by more than `gate.max_regression`.
   The champion's own test set, kept in the registry, stays the same when the data changes;
   those of its images that the candidate trained or was selected on (in its train or
   validation split after a new split) are left out, so both are scored on images neither
   learned; paired resampling keeps the images both models get right (or wrong) from widening
   the interval. On a small test set the rule is strict: against a 270/270 champion, one
   extra mistake is rejected (3 or more extra mistakes in over 5 % of the resamples);
4. new inputs: a retrain with the champion's own params and data (a different id only through
   nondeterminism, as on a GPU) leaves the champion in place.

The first model has no champion to beat: it is promoted when 1 and 2 hold. Figures come from the
torch model (load_model + predict, as evaluate computes them), not from the served ONNX file,
whose agreement with torch the compress stage checks.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from torch import nn

from tasks.core.checks import CheckResult
from tasks.core.config import AugmentConfig, GateConfig
from tasks.evaluation.metrics import paired_bootstrap
from tasks.modeling.artifact import ModelCard, predict
from tasks.modeling.checks import beats_baseline, invariance, per_class_accuracy
from tasks.registry.store import Baseline, Candidate


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(Report):
    """One rule's verdict and the sentence, with its figures, that explains it."""

    name: str
    passed: bool
    reason: str


class EntrySummary(Report):
    """A registry entry as reports/gate.json shows it."""

    id: str
    accuracy: float
    status: str
    served_format: str
    data_version: str
    params_hash: str
    parent: str | None

    @classmethod
    def of(cls, entry: Candidate | None) -> EntrySummary | None:
        if entry is None:
            return None
        return cls(**entry.model_dump(include=set(cls.model_fields)))


class GateReport(Report):
    """`reports/gate.json`: the decision, its reasons (failed rules first) and who is champion.

    No wall-clock time in it, so the same decision writes the same bytes.
    """

    decision: Literal["promoted", "rejected"]
    reasons: list[str]
    candidate: EntrySummary
    champion: EntrySummary | None  # after the decision
    previous_champion: EntrySummary | None  # before it
    rules: list[Rule]


def correct_predictions(
    network: nn.Module, card: ModelCard, images: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Per image, whether the model's top class is the label (through the card's preprocessing)."""
    return predict(network, card.preprocessing(), images).argmax(axis=1) == labels


def _from_check(check: CheckResult, label: str, setting: str) -> Rule:
    sign = ">=" if check.passed else "<"
    return Rule(
        name=check.name,
        passed=check.passed,
        reason=f"{label} {check.value:.4f} {sign} gate.{setting} {check.threshold:.4f} "
        f"{check.detail}".rstrip(),
    )


def accuracy_rule(correct: np.ndarray, min_accuracy: float) -> Rule:
    accuracy = float(correct.mean())
    passed = accuracy >= min_accuracy
    sign = ">=" if passed else "<"
    return Rule(
        name="accuracy",
        passed=passed,
        reason=f"test accuracy {accuracy:.4f} ({int(correct.sum())}/{len(correct)}) {sign} "
        f"gate.min_accuracy {min_accuracy:.4f}",
    )


def behaviour_rules(
    network: nn.Module,
    card: ModelCard,
    test: tuple[np.ndarray, np.ndarray],
    correct: np.ndarray,
    baseline: Baseline | None,
    gate: GateConfig,
    augment: AugmentConfig,
) -> list[Rule]:
    """The behavioural checks of tests/model, with the gate's thresholds, on the test split
    (`correct`: the model's per-image verdicts on it, for the comparison with the baseline)."""
    images, labels = test
    preprocessing = card.preprocessing()
    # half of the trained ranges, as tests/model/test_behaviour.py: one pixel at 16 px, 6 degrees
    shift, degrees = augment.translate / 2, augment.rotation / 2
    rules = [
        _from_check(
            invariance(network, preprocessing, images, shift, degrees, gate.min_invariance),
            "invariance",
            "min_invariance",
        ),
        _from_check(
            per_class_accuracy(
                network, preprocessing, images, labels, card.classes, gate.min_class_accuracy
            ),
            "worst class accuracy",
            "min_class_accuracy",
        ),
    ]
    if gate.require_beats_baseline:
        rules.append(baseline_rule(correct, baseline))
    return rules


def baseline_rule(correct: np.ndarray, baseline: Baseline | None) -> Rule:
    if baseline is None:
        return Rule(
            name="beats_baseline",
            passed=False,
            reason="reports/metrics.json has no baseline, and gate.require_beats_baseline is on",
        )
    check = beats_baseline(float(correct.mean()), baseline.accuracy)
    verb = "beats" if check.passed else "does not beat"
    return Rule(
        name=check.name,
        passed=check.passed,
        reason=f"{verb} the baseline ({baseline.name}): network {correct.mean():.4f} vs "
        f"{baseline.accuracy:.4f}, lead {check.value:+.4f}",
    )


def first_model_rule() -> Rule:
    return Rule(
        name="no_regression",
        passed=True,
        reason="no champion yet: the first model that meets the other rules becomes champion",
    )


def incomparable(candidate: ModelCard, champion: ModelCard, images: np.ndarray) -> Rule | None:
    """A failed rule when the candidate cannot be scored on the champion's test set."""
    problem = None
    if candidate.classes != champion.classes:
        problem = f"its classes {candidate.classes} differ from the champion's {champion.classes}"
    elif tuple(images.shape[1:]) != (
        candidate.channels,
        candidate.image_size,
        candidate.image_size,
    ):
        problem = f"it takes other images than the champion's test set {images.shape[1:]}"
    if problem is None:
        return None
    return Rule(
        name="no_regression",
        passed=False,
        reason=f"cannot be compared with the champion: {problem}; to start over with such a "
        "model, move models/registry aside",
    )


def unseen(test_images: np.ndarray, seen_images: np.ndarray) -> np.ndarray:
    """Which of `test_images` (N, C, H, W) are not, byte for byte, among `seen_images`.

    The champion's test set was split from the data of its day; after a new split (another seed,
    other fractions, new data) some of its images can be in the candidate's train or validation
    split, where the candidate learned them: scoring it on them would favour it."""
    seen = {image.tobytes() for image in seen_images}
    return np.array([image.tobytes() not in seen for image in test_images], dtype=bool)


def same_inputs_rule(candidate: Candidate, champion: Candidate | None) -> Rule:
    """A retrain with the champion's own params and data (another id only through nondeterminism,
    e.g. on a GPU) does not replace the champion: nothing new went in."""
    same = (
        champion is not None
        and champion.id != candidate.id
        and champion.params_hash == candidate.params_hash
        and champion.data_version == candidate.data_version
    )
    reason = (
        f"a retrain of champion {champion.id} with the same params and data: the champion stays"
        if same and champion is not None
        else "new params or data (or no champion yet)"
    )
    return Rule(name="new_inputs", passed=not same, reason=reason)


def regression_rule(
    correct_candidate: np.ndarray,
    correct_champion: np.ndarray,
    champion_id: str,
    gate: GateConfig,
    seed: int,
    left_out: int = 0,
) -> Rule:
    """Non-inferiority on the champion's test set by a paired bootstrap (see the module doc);
    `left_out`: champion test images not scored because the candidate trained on them."""
    if len(correct_champion) == 0:
        return Rule(
            name="no_regression",
            passed=False,
            reason=f"cannot be compared with champion {champion_id}: all {left_out} of its test "
            "images are in the candidate's train or validation split",
        )
    result = paired_bootstrap(
        correct_candidate,
        correct_champion,
        gate.bootstrap_samples,
        gate.confidence,
        seed,
        margin=gate.max_regression,
    )
    allowed = 1 - gate.confidence
    passed = result.worse_probability <= allowed
    if passed:
        verdict = "not worse than"
    elif result.difference < -gate.max_regression:
        verdict = "worse than"
    else:  # close, but the resamples leave it more than the margin behind too often
        verdict = "not shown to be within gate.max_regression of"
    sign = "<=" if passed else ">"
    skipped = f" ({left_out} left out: the candidate trained on them)" if left_out else ""
    return Rule(
        name="no_regression",
        passed=passed,
        reason=f"{verdict} champion {champion_id} on its {len(correct_champion)} test images"
        f"{skipped}: accuracy difference {result.difference:+.4f} ({gate.confidence:.0%} "
        f"interval [{result.low:+.4f}, {result.high:+.4f}]); it trails by more than "
        f"gate.max_regression {gate.max_regression:.4f} in {result.worse_probability:.3f} of "
        f"{gate.bootstrap_samples} paired resamples {sign} {allowed:.3f} allowed",
    )


def decide(rules: list[Rule]) -> tuple[bool, list[str]]:
    """Promoted when every rule passed; the reasons list the failed rules first."""
    failed = [rule.reason for rule in rules if not rule.passed]
    return not failed, failed + [rule.reason for rule in rules if rule.passed]
