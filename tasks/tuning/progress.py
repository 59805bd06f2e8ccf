"""One console line per trial event, in place of Ray's status tables (`tune.verbose: false`).

Ray Tune's default console output is a table of every trial, reprinted as trials progress (about
60 lines for two trials). sixfold prints instead one line when a trial ends, stops early, fails
or is retried, with its values and score; `tune.verbose: true` brings Ray's tables back.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from tasks.core.errors import shown_values


class TrialLines(Callback):
    """Prints `tune: trial 3/8 ...` lines from the driver as trials end."""

    def __init__(self, total: int, max_epochs: int, metric: str, keys: list[str]) -> None:
        self.total = total
        self.max_epochs = max_epochs
        self.metric = metric
        self.keys = keys
        self.numbers: dict[str, int] = {}

    def _number(self, trial: Any) -> int:
        return self.numbers.setdefault(trial.trial_id, len(self.numbers) + 1)

    def _say(self, trial: Any, text: str) -> None:
        values = shown_values({key: trial.config.get(key) for key in self.keys})
        print(f"tune: trial {self._number(trial)}/{self.total} ({values}) {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._number(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        epochs = int(result.get("training_iteration", 0))
        score = result.get(self.metric)
        scored = f"{self.metric} {score:.4f}" if isinstance(score, int | float) else "no score"
        how = "done" if epochs >= self.max_epochs else "stopped early (ASHA)"
        self._say(trial, f"{how}: {scored} after {epochs} of {self.max_epochs} epochs")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(trial, "failed for good (traceback in its error.txt)")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(trial, "crashed; retrying it")
