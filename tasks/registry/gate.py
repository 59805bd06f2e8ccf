"""The promotion gate: the rules a candidate must meet to become the champion, each with a reason.

1. accuracy: test accuracy >= `gate.min_accuracy`;
2. behaviour, the checks of `tests/model/test_behaviour.py` (`tasks.modeling.checks`):
   predictions kept under shifts and rotations of half the trained ranges (`augment.translate`,
   `augment.rotation`) for at least `gate.min_invariance` of the images, every class at least
   `gate.min_class_accuracy`, and (if `gate.require_beats_baseline`) better than the same-run
   classical baseline;
3. no regression: on the *champion's* test set, the candidate must be shown not worse than the
   champion by `gate.max_regression` or more (:func:`paired_rule`). The champion's own test set,
   kept in the registry, stays the same when the data changes; those of its images that the
   candidate trained or was selected on (in its train or validation split after a new split)
   are left out, so both are scored on images neither learned. After continual learning the
   champion's test set is its parent's plus the batch's test part: a pipeline candidate that
   never saw the batch is scored on those images too;
4. new inputs: a retrain with the champion's own params and data (a different id only through
   nondeterminism, as on a GPU) leaves the champion in place.

The first model has no champion to beat: it is promoted when 1 and 2 hold. Figures come from the
torch model (load_model + predict, as evaluate computes them), not from the served ONNX file,
whose agreement with torch the compress code checks.

**The one paired comparison** (promote's rule 3, and continual learning's forgetting and gain,
`tasks.continual.decision`): Tango's score test (`tasks.evaluation.metrics.paired_score_test`)
of accuracy(candidate) - accuracy(champion) on the same images, one-sided at
`gate.confidence`. Only the images the two models disagree about carry information (wins:
candidate right, champion wrong; losses: the reverse); the test's variance uses their rates
under the null hypothesis, estimated by maximum likelihood. Non-inferiority (margin
`gate.max_regression`): promoted only if the difference is shown to be above -margin. Superiority
(margin 0, continual learning's gain on the batch's test part): shown to be above 0; there the
test is McNemar's. Its error rate: a candidate truly worse by more than the margin (or, for the
gain, truly no better) passes in about 1 - `gate.confidence` of comparisons or fewer;
`tests/code/test_promotion_rule.py` simulates it over test set sizes and disagreement rates.

Why this test: the paired bootstrap used before resamples only the disagreements it saw, so with
few of them (a champion near 100 %) it passes a candidate truly worse by the margin far more
often than 1 - confidence; an exact binomial (McNemar) test conditions on the number of
disagreements and so cannot carry a margin on the accuracy difference. The score test needs no
seed and no resamples. It cannot show what the data cannot: with n images and no disagreement,
non-inferiority passes only when n > z^2 (1 - margin) / margin.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from torch import nn

from tasks.core.checks import CheckResult
from tasks.core.config import AugmentConfig, GateConfig
from tasks.evaluation.metrics import paired_score_test
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
    measured_on: str  # the test set `accuracy` was measured on

    @classmethod
    def of(cls, entry: Candidate | None) -> EntrySummary | None:
        if entry is None:
            return None
        fields = entry.model_dump(include=set(cls.model_fields))
        return cls(**fields, measured_on=entry.measured_on)


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


def paired_rule(
    name: str,
    correct_candidate: np.ndarray,
    correct_champion: np.ndarray,
    margin: float,
    gate: GateConfig,
    where: str,
) -> Rule:
    """The one paired comparison (module doc): passed when accuracy(candidate) -
    accuracy(champion) on these images is shown above -`margin` (0: the candidate is shown
    better) at `gate.confidence`; `where` names the images in the reason."""
    if margin >= 1:  # gate.max_regression 1: any loss is allowed, nothing to show
        return Rule(
            name=name,
            passed=True,
            reason=f"{where}: not compared, gate.max_regression is 1 (any regression allowed)",
        )
    test = paired_score_test(correct_candidate, correct_champion, margin, gate.confidence)
    claim = "is better" if margin == 0 else f"trails by less than gate.max_regression {margin:.4f}"
    verdict = "shown" if test.passed else "not shown"
    sign = ">" if test.passed else "<="
    return Rule(
        name=name,
        passed=test.passed,
        reason=f"{where}: {verdict} that the candidate {claim}: accuracy "
        f"{correct_candidate.mean():.4f} vs {correct_champion.mean():.4f}, difference "
        f"{test.difference:+.4f}, {test.wins} won and {test.losses} lost of {test.images}; "
        f"{gate.confidence:.0%} lower bound {test.lower_bound:+.4f} {sign} {-margin:+.4f} "
        f"(score test z = {test.statistic:.2f})",
    )


def regression_rule(
    correct_candidate: np.ndarray,
    correct_champion: np.ndarray,
    champion_id: str,
    gate: GateConfig,
    left_out: int = 0,
) -> Rule:
    """Non-inferiority on the champion's test set (rule 3); `left_out`: champion test images
    not scored because the candidate trained on them."""
    if len(correct_champion) == 0:
        return Rule(
            name="no_regression",
            passed=False,
            reason=f"cannot be compared with champion {champion_id}: all {left_out} of its test "
            "images are in the candidate's train or validation split",
        )
    skipped = f" ({left_out} left out: the candidate trained on them)" if left_out else ""
    where = f"against champion {champion_id} on its {len(correct_champion)} test images{skipped}"
    return paired_rule(
        "no_regression", correct_candidate, correct_champion, gate.max_regression, gate, where
    )


def decide(rules: list[Rule]) -> tuple[bool, list[str]]:
    """Promoted when every rule passed; the reasons list the failed rules first."""
    failed = [rule.reason for rule in rules if not rule.passed]
    return not failed, failed + [rule.reason for rule in rules if rule.passed]
