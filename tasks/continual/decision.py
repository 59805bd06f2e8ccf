"""The continual-learning gate: better on the new data, no more than a little worse on the old.

1. gain: accuracy on the batch's test part above the champion's by more than
   `continual.min_gain` (the reason the batch was brought);
2. forgetting: accuracy on the old test split (the champion's registered test set) at most
   `continual.max_forgetting` below the champion's;
3. the promotion gate's own rules where they mean the same here (`tasks.registry.gate`): test
   accuracy >= `gate.min_accuracy` on the old test split, and the behavioural checks
   (invariance, weakest class) on it. The comparison with the classical baseline is left out:
   the baseline was scored on the old test split by evaluate and knows nothing of the batch.

Rules 1 and 2 compare point estimates (the decision the figures show); the paired bootstrap
intervals are reported beside them.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from tasks.core.config import Params
from tasks.data.packed import Split
from tasks.modeling.artifact import ModelCard
from tasks.registry.gate import Rule, accuracy_rule, behaviour_rules

# accuracies are fractions of whole images: a loss equal to the limit counts as within it
_TOLERANCE = 1e-9


def gain_rule(champion: float, challenger: float, min_gain: float) -> Rule:
    gain = challenger - champion
    passed = gain > min_gain + _TOLERANCE
    sign = ">" if passed else "<="
    return Rule(
        name="gain_on_new_data",
        passed=passed,
        reason=f"on the batch's test part: challenger {challenger:.4f} vs champion "
        f"{champion:.4f}, gain {gain:+.4f} {sign} continual.min_gain {min_gain:.4f}",
    )


def forgetting_rule(champion: float, challenger: float, max_forgetting: float) -> Rule:
    loss = champion - challenger
    passed = loss <= max_forgetting + _TOLERANCE
    sign = "<=" if passed else ">"
    return Rule(
        name="forgetting",
        passed=passed,
        reason=f"on the old test split: challenger {challenger:.4f} vs champion {champion:.4f}, "
        f"loss {loss:+.4f} {sign} continual.max_forgetting {max_forgetting:.4f}",
    )


def continual_rules(
    gain: Rule,
    forgetting: Rule,
    challenger: tuple[nn.Module, ModelCard],
    old_test: Split,
    correct_old: np.ndarray,
    params: Params,
) -> list[Rule]:
    """Every rule of the module docstring, for the challenger on the old test split."""
    gate = params.gate.model_copy(update={"require_beats_baseline": False})
    network, card = challenger
    return [
        gain,
        forgetting,
        accuracy_rule(correct_old, gate.min_accuracy),
        *behaviour_rules(network, card, old_test, correct_old, None, gate, params.augment),
    ]
