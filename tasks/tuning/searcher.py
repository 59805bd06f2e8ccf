"""The searchers: Optuna's TPE that never trains a configuration twice, or random search.

Once TPE exploits, it often suggests a configuration it has already tried (always likely on
`choice` and `int` spaces). Training it again costs a whole trial and, under ASHA, a repeat of
the best trial ties it at each rung and is promoted to the end. :class:`DistinctSuggestions`
wraps any Ray searcher through Ray's public Searcher interface (as Ray's own
ConcurrencyLimiter does): a repeat is told the earlier trial's result (pruned while that one
still runs) and the searcher is asked again.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator

REDRAWS = 50  # then a repeat is trained after all (a space with nothing new left)


def config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


class DistinctSuggestions(Searcher):
    """Wraps `searcher` so that no configuration is suggested twice."""

    def __init__(self, searcher: Searcher, redraws: int = REDRAWS) -> None:
        self.searcher = searcher
        self.redraws = redraws
        self.results: dict[str, float | None] = {}  # config -> its result (None: not yet known)
        self.config_of: dict[str, dict[str, Any]] = {}  # Tune's trial id -> its config
        self.inner_id: dict[str, str] = {}  # Tune's trial id -> the id the searcher knows
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    @property
    def metric(self) -> str | None:
        return self.searcher.metric

    @property
    def mode(self) -> str | None:
        return self.searcher.mode

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict | None:
        asked = trial_id
        config = self.searcher.suggest(asked)
        for redraw in range(1, self.redraws + 1):
            if not isinstance(config, dict) or config_key(config) not in self.results:
                break
            earlier = self.results[config_key(config)]
            # tell the searcher what the repeat would give: pruned while the original runs
            result = None if earlier is None else {self.metric: earlier}
            self.searcher.on_trial_complete(asked, result=result)
            asked = f"{trial_id}-redraw{redraw}"
            config = self.searcher.suggest(asked)
        self.inner_id[trial_id] = asked
        if isinstance(config, dict):
            self.results.setdefault(config_key(config), None)
            self.config_of[trial_id] = config
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(self.inner_id.get(trial_id, trial_id), result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        value = (result or {}).get(self.metric)
        config = self.config_of.get(trial_id)
        if value is not None and config is not None:
            self.results[config_key(config)] = value
        inner = self.inner_id.get(trial_id, trial_id)
        self.searcher.on_trial_complete(inner, result=result, error=error)

    # Ray saves a wrapper's own state with get_state (the wrapped searcher saves itself), as for
    # its ConcurrencyLimiter; a restored search keeps knowing which configurations it has tried
    def get_state(self) -> dict[str, Any]:
        return copy.deepcopy(
            {"results": self.results, "config_of": self.config_of, "inner_id": self.inner_id}
        )

    def set_state(self, state: dict[str, Any]) -> None:
        self.results = dict(state["results"])
        self.config_of = dict(state["config_of"])
        self.inner_id = dict(state["inner_id"])


def make_searcher(
    kind: str,
    num_samples: int,
    max_concurrent: int,
    seed: int,
    first: list[dict[str, Any]] | None = None,
) -> Any:
    """Optuna's TPE (with a short random start, so small budgets still exploit) or random search.

    `first`: configurations TPE tries before its own (`anchor_points`); random search ignores
    them (it is the control that knows nothing)."""
    if kind == "random":
        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    startup = min(10, max(2, num_samples // 3))  # Optuna's default of 10 is most of a small search
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    search = OptunaSearch(sampler=sampler, points_to_evaluate=first or None)
    return ConcurrencyLimiter(DistinctSuggestions(search), max_concurrent=max_concurrent)


def anchor_points(current: dict[str, Any], dimensions: dict[str, Any]) -> list[dict[str, Any]]:
    """The search's first two trials: the params.yaml values (the user's own configuration), and
    the same with every augmentation choice at its strongest (flips on, the widest rotation and
    zoom): the two ends of the invariance axis, which short random starts often miss both of.
    Data whose classes survive mirroring and turning (photos, textures) gains from the second,
    upright mirror-sensitive data (digits) loses with it; the search then goes on from the
    better. A current value outside its dimension leaves the anchors out."""
    anchored = {}
    for key, dimension in dimensions.items():
        value = current[key]
        if dimension.type == "choice":
            if value not in dimension.values:
                return []
            value = dimension.values[dimension.values.index(value)]  # 12.0 -> the choice 12
        elif not dimension.low <= value <= dimension.high:
            return []
        anchored[key] = value
    strongest = dict(anchored)
    for key, dimension in dimensions.items():
        if key.startswith("augment.") and dimension.type == "choice":
            strongest[key] = max(dimension.values)  # True > False; the largest range
    return [anchored] if strongest == anchored else [anchored, strongest]
