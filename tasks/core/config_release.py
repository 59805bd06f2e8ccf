"""Typed settings of the stages after training: evaluate, explain, compress and the promotion gate.

Kept apart from `tasks/core/config.py` (which holds the sections that shape the data, the model
and its training) so each module stays short; `Params` in `config.py` holds both. The same rules
apply: unknown keys, wrong types and out-of-range values stop the run with one line naming the key.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ExplainMethod = Literal["integrated_gradients", "gradient_shap", "lime"]
# every method runs: each one's grid is a declared output of the explain stage (dvc.yaml)
EXPLAIN_METHODS: tuple[ExplainMethod, ...] = ("integrated_gradients", "gradient_shap", "lime")
MONITOR_FAMILY = 8  # p-value tests in one drift verdict at most (tasks.monitoring.drift)


class ReleaseSection(BaseModel):
    """Base for these sections: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class EvaluateConfig(ReleaseSection):
    baseline: Literal["logistic_regression", "svc"] = "logistic_regression"
    baseline_c: dict[Literal["logistic_regression", "svc"], float] = Field(
        default_factory=lambda: {"logistic_regression": 1.0, "svc": 10.0}
    )
    baseline_max_iter: int = Field(3000, ge=1)
    bootstrap_samples: int = Field(2000, ge=100, le=100_000)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    calibration_bins: int = Field(10, ge=2, le=100)

    @model_validator(mode="after")
    def _positive_c(self) -> EvaluateConfig:
        for name, value in self.baseline_c.items():
            if not value > 0:
                raise ValueError(f"evaluate.baseline_c.{name} must be > 0, got {value}")
        return self


class ExplainConfig(ReleaseSection):
    per_class: int = Field(2, ge=0, le=50)
    max_misclassified: int = Field(40, ge=0, le=1000)
    ig_steps: int = Field(32, ge=2, le=1000)
    internal_batch_size: int = Field(64, ge=1)
    shap_samples: int = Field(16, ge=1, le=1000)
    lime_samples: int = Field(200, ge=10, le=10_000)
    lime_grid: int = Field(8, ge=2, le=64)
    sanity_samples: int = Field(32, ge=2, le=1000)
    sanity_max_correlation: float = Field(0.7, gt=-1, lt=1)


class CompressConfig(ReleaseSection):
    calibration_images: int = Field(128, ge=1, le=100_000)
    max_accuracy_drop: float = Field(0.005, ge=0, le=1)
    threads: int | None = Field(None, ge=1)
    latency_repeats: int = Field(30, ge=1, le=10_000)
    atol: float = Field(1e-4, gt=0)


class ServeConfig(ReleaseSection):
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_latency_ms: int = Field(500, ge=1, le=600_000)
    max_concurrency: int = Field(64, ge=1, le=100_000)
    max_images: int = Field(16, ge=1, le=10_000)
    max_request_mb: float = Field(8.0, gt=0, le=1024)
    log_dir: str = "logs/predictions"
    log_max_mb: float = Field(16.0, gt=0)
    log_backups: int = Field(5, ge=0, le=1000)
    golden_images: int = Field(32, ge=1, le=10_000)


class MonitorConfig(ReleaseSection):
    """`monitor:`: one family-wise drift verdict per check (`tasks.monitoring.drift`)."""

    min_records: int = Field(50, ge=5)
    false_alarm_rate: float = Field(0.01, gt=0, lt=0.5)  # per check, all tests together (Holm)
    consecutive: int = Field(2, ge=1, le=1000)  # drift verdicts in a row before continual learning
    psi_threshold: float = Field(0.2, gt=0)
    confidence_drop: float = Field(0.05, ge=0, le=1)
    mmd_permutations: int = Field(2000, ge=10, le=100_000)
    mmd_max_samples: int = Field(500, ge=10, le=100_000)

    @model_validator(mode="after")
    def _permutations_can_reach_the_level(self) -> MonitorConfig:
        # Holm compares the smallest p-value with false_alarm_rate / tests (7 at most); a
        # permutation p-value is never below 1 / (permutations + 1)
        needed = math.ceil(MONITOR_FAMILY * 2 / self.false_alarm_rate)
        if self.mmd_permutations < needed:
            raise ValueError(
                f"monitor.mmd_permutations must be >= {needed} at monitor.false_alarm_rate "
                f"{self.false_alarm_rate} (got {self.mmd_permutations}): its smallest p-value, "
                "1 / (permutations + 1), must be able to pass the Holm correction"
            )
        return self


class GateConfig(ReleaseSection):
    """`gate:`: the one promotion rule (`tasks.registry.gate`): promote and continual learning."""

    min_accuracy: float = Field(0.9, ge=0, le=1)
    max_regression: float = Field(0.02, gt=0, le=1)  # non-inferiority margin; 1: off
    confidence: float = Field(0.95, gt=0.5, lt=1)  # of each paired comparison, one-sided
    min_class_accuracy: float = Field(0.85, ge=0, le=1)
    min_invariance: float = Field(0.9, ge=0, le=1)
    require_beats_baseline: bool = True


class ContinualConfig(ReleaseSection):
    """`continual:`: a labelled batch fine-tunes the champion with replay, judged by the
    promotion rule of `gate:`."""

    batch: str | None = None  # what the flow learns from when started without a batch
    test_fraction: float = Field(0.3, gt=0, lt=1)
    # old train images replayed per new train image (1.0: as many old as new), at most all of them
    replay_fraction: float = Field(2.0, ge=0, le=100)
    epochs: int = Field(15, ge=1, le=10_000)
    lr: float = Field(0.001, gt=0, le=10)
    min_batch_images: int = Field(20, ge=2)
