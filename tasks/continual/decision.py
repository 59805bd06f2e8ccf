"""The continual-learning decision: the promotion gate's one rule (`tasks.registry.gate`), applied
to a challenger fine-tuned on a new batch.

1. gain: on the batch's test part the challenger is shown *better* than the champion (the paired
   comparison with margin 0: superiority, at `gate.confidence`): the batch was brought because
   the champion does badly on such images, and a challenger that is not shown better there
   gives no reason to replace it;
2. forgetting: on the old test set (the champion's registered test set, none of whose images
   the challenger learned from: replay leaves them out) the challenger is shown not worse by
   `gate.max_regression` or more: the promote stage's no-regression rule, same margin, same
   confidence;
3. the promotion gate's other rules where they mean the same here: test accuracy >=
   `gate.min_accuracy` on the old test set, and the behavioural checks (invariance, weakest
   class) on it. The comparison with the classical baseline is left out: the baseline was
   scored on the old test split by evaluate and knows nothing of the batch.

There is no separate continual threshold: a challenger that the weekly pipeline's promote would
reject for regressing on the old test set is rejected here too, by the same code.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from tasks.core.config import GateConfig, Params
from tasks.data.packed import Split
from tasks.modeling.artifact import ModelCard
from tasks.registry.gate import Rule, accuracy_rule, behaviour_rules, paired_rule


def gain_rule(
    correct_challenger: np.ndarray, correct_champion: np.ndarray, gate: GateConfig
) -> Rule:
    """Rule 1: shown better on the batch's test part."""
    where = f"on the batch's {len(correct_champion)} test images"
    return paired_rule("gain_on_new_data", correct_challenger, correct_champion, 0.0, gate, where)


def forgetting_rule(
    correct_challenger: np.ndarray, correct_champion: np.ndarray, gate: GateConfig
) -> Rule:
    """Rule 2: shown not worse by gate.max_regression on the old test set."""
    where = f"on the old test set's {len(correct_champion)} images"
    return paired_rule(
        "forgetting", correct_challenger, correct_champion, gate.max_regression, gate, where
    )


def continual_rules(
    gain: Rule,
    forgetting: Rule,
    challenger: tuple[nn.Module, ModelCard],
    old_test: Split,
    correct_old: np.ndarray,
    params: Params,
) -> list[Rule]:
    """Every rule of the module docstring, for the challenger on the old test set."""
    gate = params.gate.model_copy(update={"require_beats_baseline": False})
    network, card = challenger
    return [
        gain,
        forgetting,
        accuracy_rule(correct_old, gate.min_accuracy),
        *behaviour_rules(network, card, old_test, correct_old, None, gate, params.augment),
    ]
