"""The promotion gate's one paired rule (`tasks.registry.gate`, Tango's score test in
`tasks.evaluation.metrics`) keeps its stated error rate: a seeded simulation of many comparisons,
numpy only (no model).

Each run draws, for n paired test images, how many the candidate gets right where the champion
is wrong (wins) and the reverse (losses), from known true rates; the rule sees only the counts,
as it does on real predictions. Stated rate: a candidate truly worse by more than the margin is
promoted in at most 1 - confidence of comparisons (and a candidate truly no better is found
better, continual learning's gain, as rarely). At the margin itself the normal approximation on
few disagreements can exceed it a little; the tolerance below says by how much.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from tasks.evaluation.metrics import paired_score_test, score_statistic

CONFIDENCE = 0.95
RUNS = 4000  # per case: the rate's standard error is about 0.0035 at 0.05
TOLERANCE = 0.015  # about four standard errors of the simulated rate
SIZES = (120, 270, 1000, 5000)  # a batch's test part, the digits' test split, larger sets
WIN_RATES = (0.0, 0.005, 0.02, 0.1)  # how often the candidate is right where the champion is not


def promoted_share(
    size: int, wins: float, losses: float, margin: float, generator: np.random.Generator
) -> float:
    """Share of `RUNS` simulated comparisons the rule passes, at the true rates given."""
    counts = generator.multinomial(size, [wins, losses, 1 - wins - losses], size=RUNS)
    statistic = score_statistic(counts[:, 0], counts[:, 1], size, -margin)
    return float((statistic > norm.ppf(CONFIDENCE)).mean())


@pytest.mark.parametrize("margin", [0.01, 0.02, 0.05])
def test_a_candidate_worse_than_the_margin_is_rarely_promoted(margin: float) -> None:
    generator = np.random.default_rng(0)
    allowed = 1 - CONFIDENCE
    for size in SIZES:
        for wins in WIN_RATES:
            beyond = promoted_share(size, wins, wins + 1.25 * margin, margin, generator)
            assert beyond <= allowed + TOLERANCE, (size, wins, beyond)
            at_margin = promoted_share(size, wins, wins + margin, margin, generator)
            assert at_margin <= allowed + 2 * TOLERANCE, (size, wins, at_margin)


def test_a_candidate_no_better_is_rarely_found_better() -> None:
    generator = np.random.default_rng(1)
    for size in SIZES:
        for rate in (0.002, 0.01, 0.05, 0.3):  # disagreements each way, equally often
            found = promoted_share(size, rate, rate, 0.0, generator)
            assert found <= 1 - CONFIDENCE + TOLERANCE, (size, rate, found)


def test_the_rule_passes_what_it_should() -> None:
    """Power, for the cases the gate exists for: a candidate as good as the champion on a
    1000-image test set passes non-inferiority at 0.02; a challenger 10 points better on a
    120-image batch test part is found better."""
    generator = np.random.default_rng(2)
    assert promoted_share(1000, 0.01, 0.01, 0.02, generator) >= 0.95
    assert promoted_share(120, 0.12, 0.02, 0.0, generator) >= 0.9


def test_the_bound_and_the_verdict_agree() -> None:
    """passed exactly when the one-sided lower bound is above -margin (the reason shows both)."""
    generator = np.random.default_rng(3)
    for _ in range(300):
        size = int(generator.integers(20, 400))
        a, b = generator.random(size) < 0.9, generator.random(size) < 0.9
        margin = float(generator.choice([0.0, 0.01, 0.02, 0.05]))
        test = paired_score_test(a, b, margin, CONFIDENCE)
        if abs(test.lower_bound + margin) > 1e-9:
            assert test.passed == (test.lower_bound > -margin), test
        assert test.lower_bound <= test.difference + 1e-12


def test_disagreements_alone_decide() -> None:
    """Images both models get right, or both wrong, only set n: the same wins and losses among
    more agreeing images is the stronger evidence of no regression."""
    small = paired_score_test(np.r_[np.ones(100), 0] > 0, np.ones(101) > 0, 0.02, CONFIDENCE)
    large = paired_score_test(np.r_[np.ones(400), 0] > 0, np.ones(401) > 0, 0.02, CONFIDENCE)
    assert (small.wins, small.losses) == (large.wins, large.losses) == (0, 1)
    assert not small.passed and large.passed
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_score_test(np.ones(3) > 0, np.ones(2) > 0, 0.02, CONFIDENCE)
