"""Typed configuration: the one way every stage reads `params.yaml`.

Unknown keys, wrong types and out-of-range values stop the run before any work, with one line
that names the key, the value and what is allowed, e.g.::

    params.yaml: train.lr must be > 0, got -1

A key given twice in one mapping (YAML itself would keep the last silently) is refused too.
Check the file on its own with ``python -m tasks.core.config [path]``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.core.config_errors import DuplicateKey, describe, read_yaml
from tasks.core.errors import ConfigError, shown
from tasks.core.layout import Layout
from tasks.core.runner import print_help, usage_error, wants_help
from tasks.core.secrets import secret_looking_keys

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


# PIL refuses to open an image over twice this many pixels (and warns above it): a larger
# data.max_pixels could never be honoured, so the config refuses it instead.
PIL_PIXEL_LIMIT = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS, PIL's default decompression-bomb limit


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class DataConfig(Section):
    source: str = "sklearn:digits"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    image_size: int = Field(16, ge=4, le=1024)
    # 1 (grayscale), 3 (RGB) or "auto": RGB when enough accepted images carry colour, measured
    # by validate (tasks.data.images.choose_channels), grayscale otherwise
    channels: Literal[1, 3, "auto"] = "auto"
    min_size: int = Field(8, ge=1)
    max_pixels: int = Field(25_000_000, ge=1, le=PIL_PIXEL_LIMIT)
    classes: list[str] | None = None
    max_quarantined_fraction: float = Field(0.2, ge=0, le=1)
    imbalance_warn: float = Field(3.0, ge=1)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)
    group_column: str | None = None
    near_duplicate_distance: int = Field(0, ge=0, le=64)
    # every class needs at least this many images in validation and in test, or split stops
    min_per_split: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "data.val_fraction + data.test_fraction must be < 0.9, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self

    @model_validator(mode="after")
    def _no_secrets(self) -> DataConfig:
        leaked = secret_looking_keys(self.storage_options, "data.storage_options")
        if leaked:
            raise ValueError(
                f"data.storage_options must not hold secrets (found {', '.join(leaked)}); "
                "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) or an AWS "
                "profile instead"
            )
        return self


class AugmentConfig(Section):
    copies: int = Field(2, ge=0, le=100)
    online: bool = True
    rotation: float = Field(12.0, ge=0, le=180)
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = Field(0.1, ge=0, le=0.5)
    # auto: on when the labels survive a mirror, measured by the augment stage (data/mirror.py)
    hflip: bool | Literal["auto"] = False
    vflip: bool = False
    brightness: float = Field(0.2, ge=0, lt=1)
    contrast: float = Field(0.2, ge=0, lt=1)
    noise_std: float = Field(0.02, ge=0, le=1)
    erase_prob: float = Field(0.2, ge=0, le=1)
    erase_scale: tuple[float, float] = (0.02, 0.1)
    fill: Literal["zeros", "border", "reflection"] = "zeros"

    @field_validator("scale", mode="before")
    @classmethod
    def _scale_half_range(cls, value: Any) -> Any:
        # one number s means [1 - s, 1 + s]: a scalar the search can choose (tune.space)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not 0 <= value < 1:
                raise ValueError(f"augment.scale as one number must be in [0, 1), got {value}")
            return (1 - value, 1 + value)
        return value

    @model_validator(mode="after")
    def _ordered_ranges(self) -> AugmentConfig:
        for name in ("scale", "erase_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(
                    f"augment.{name} must be [low, high] with 0 < low <= high, got {[low, high]}"
                )
        if self.erase_scale[1] >= 1:
            raise ValueError(f"augment.erase_scale must stay below 1, got {list(self.erase_scale)}")
        return self


class ModelConfig(Section):
    arch: Literal["cnn", "resnet18", "resnet34", "resnet50"] = "cnn"
    width: int = Field(32, ge=4, le=512)
    dropout: float = Field(0.2, ge=0, lt=1)
    pretrained: str | None = None
    freeze_backbone: bool = False


class TrainConfig(Section):
    lr: float = Field(0.003, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    batch_size: int = Field(64, ge=1)
    max_epochs: int = Field(40, ge=1)
    patience: int = Field(20, ge=1)
    schedule: Literal["onecycle", "cosine", "constant"] = "cosine"
    gradient_clip: float | None = Field(1.0, gt=0)
    finetune_epochs: int = Field(0, ge=0)
    overfit_warn_gap: float = Field(0.05, ge=0, le=1)
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = "auto"
    strategy: Literal["auto", "ddp"] = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: Literal["32-true", "32", "16-mixed", "bf16-mixed"] = "32-true"
    cv_folds: int = Field(1, ge=1, le=20)

    @field_validator("devices", mode="before")
    @classmethod
    def _whole_number_or_auto(cls, value: Any) -> Any:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError(f'train.devices must be a whole number >= 1 or "auto", got {value!r}')

    @model_validator(mode="after")
    def _finetune_fits(self) -> TrainConfig:
        if self.finetune_epochs >= self.max_epochs:
            raise ValueError(
                f"train.finetune_epochs must be < train.max_epochs ({self.max_epochs}), "
                f"got {self.finetune_epochs}"
            )
        return self


class SearchDimension(Section):
    """One tunable key: `type` with `low`/`high` (loguniform, uniform, int) or `values` (choice)."""

    type: Literal["loguniform", "uniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> SearchDimension:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice dimension needs a non-empty `values` list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(
                f"a {self.type} dimension needs low < high, got {self.low}, {self.high}"
            )
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"a loguniform dimension needs low > 0, got {self.low}")
        return self


TUNABLE_SECTIONS = ("train", "model", "augment")


class TuneSettings(Section):
    enabled: bool = True
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    search: Literal["optuna", "random"] = "optuna"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(2, ge=1)
    reduction_factor: int = Field(3, ge=2)
    max_epochs: int = Field(10, ge=1)
    # wall clock of the search; trials and epochs per trial follow from it and the data
    # (tasks/tuning/budget.py), num_samples and max_epochs become their upper bounds
    time_budget_minutes: float | None = Field(None, gt=0)
    # > 0: train gets the cheapest trial this many validation images below the best, or closer
    cheaper_within_images: int = Field(0, ge=0)
    # train keeps the params.yaml configuration when within this many standard errors of the
    # best trial's val_acc (the one-standard-error rule; 0: the best trial always wins)
    keep_params_within_se: float = Field(0.0, ge=0)
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    mode: Literal["max", "min"] = "max"
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    address: str | None = None
    max_failures: int = Field(2, ge=0)
    verbose: bool = False  # true: Ray's own progress tables and logs as well as sixfold's lines
    # section -> key -> dimension, e.g. space: {train: {lr: {type: loguniform, low: .., high: ..}}}
    space: dict[Literal["train", "model", "augment"], dict[str, SearchDimension]] = Field(
        default_factory=dict
    )

    def flat_space(self) -> dict[str, SearchDimension]:
        """The space with dotted keys: {"train.lr": SearchDimension, ...}."""
        return {f"{s}.{k}": dim for s, keys in self.space.items() for k, dim in keys.items()}

    @model_validator(mode="after")
    def _space_keys_exist(self) -> TuneSettings:
        sections = {"train": TrainConfig, "model": ModelConfig, "augment": AugmentConfig}
        for key in self.flat_space():
            section, _, name = key.partition(".")
            if name not in sections[section].model_fields:
                raise ValueError(f"tune.space.{key} names no {section} setting")
        expected_mode = {"val_acc": "max", "val_loss": "min"}[self.metric]
        if self.mode != expected_mode:
            raise ValueError(
                f"tune.mode must be {expected_mode!r} for tune.metric {self.metric}, "
                f"got {self.mode!r}"
            )
        if self.grace_period > self.max_epochs:
            raise ValueError(
                f"tune.grace_period must be <= tune.max_epochs ({self.max_epochs}), "
                f"got {self.grace_period}"
            )
        return self


class Params(Section):
    seed: int = Field(42, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    continual: ContinualConfig = Field(default_factory=ContinualConfig)

    @model_validator(mode="after")
    def _search_space_fits(self) -> Params:
        """Every bound and choice in tune.space must be a value its setting accepts."""
        for key, dimension in self.tune.flat_space().items():
            section_name, _, name = key.partition(".")
            section = getattr(self, section_name)
            current = getattr(section, name)
            if dimension.type == "choice":
                candidates = [(value, value) for value in dimension.values or []]
            elif dimension.type == "int":
                candidates = [(int(b or 0), int(b or 0)) for b in (dimension.low, dimension.high)]
            elif isinstance(current, int) and not isinstance(current, bool):
                raise ValueError(
                    f"tune.space.{key} is {dimension.type}, but {key} takes whole numbers; "
                    "use type: int (or choice)"
                )
            else:  # uniform draws from [low, high): the bound itself is never drawn
                low, high = float(dimension.low or 0), float(dimension.high or 0)
                candidates = [(low, low), (high, math.nextafter(high, low))]
            for allowed, value in candidates:
                try:
                    type(section).model_validate({**section.model_dump(), name: value})
                except ValidationError as error:
                    problem = describe(error.errors()[0], type(section))
                    if error.errors()[0]["type"] != "value_error":  # those name their key
                        problem = f"{section_name}.{problem}"
                    raise ValueError(
                        f"tune.space.{key} allows {allowed!r}, which {key} does not accept "
                        f"({problem})"
                    ) from None
        return self


def load_params(path: str | Path | None = None) -> Params:
    """Read and validate params.yaml (default: the current repository's).

    Raises:
        ConfigError: with a one-line message naming the offending key.
    """
    path = Path(path) if path is not None else Layout.discover().params_file
    name = shown(path)
    try:
        raw = read_yaml(path.read_text()) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"{name}: not found (run inside a sixfold repository)") from error
    except DuplicateKey as error:
        raise ConfigError(f"{name}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{name}: not valid YAML: {error}".replace("\n", " ")) from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = [describe(item, Params) for item in error.errors()]
        raise ConfigError(f"{name}: " + "; ".join(problems)) from None


def with_overrides(params: Params, overrides: dict[str, Any]) -> Params:
    """A copy of `params` with dotted keys replaced (`{"train.lr": 0.01}`), validated again."""
    raw = params.model_dump()
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in raw or not isinstance(raw[section], dict) or name not in raw[section]:
            raise ConfigError(f"override {key!r} names no setting")
        raw[section][name] = value
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = [describe(item, Params) for item in error.errors()]
        raise ConfigError("overrides: " + "; ".join(problems)) from None


def load_params_or_exit(path: str | Path | None = None) -> Params:
    """Like :func:`load_params`, but print the one-line error and exit 2 (for stage mains)."""
    try:
        return load_params(path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


USAGE = "usage: python -m tasks.core.config [-h] [PATH]"


def main(arguments: list[str] | None = None) -> None:
    """Check a params file (default: the repository's params.yaml): print `ok` or the error."""
    arguments = sys.argv[1:] if arguments is None else arguments
    if wants_help(arguments):
        summary = " ".join((__doc__ or "").split("\n\n")[0].split())
        print_help(
            f"{USAGE}\n\n{summary}\n\nChecks PATH (default: the params.yaml of the repository "
            "around the working directory)\nand prints `PATH: ok`, or one `error: ...` line and "
            "exits 2. Reads PATH; writes nothing."
        )
    if any(argument.startswith("-") for argument in arguments):
        usage_error(USAGE, f"unknown option {next(a for a in arguments if a.startswith('-'))!r}")
    if len(arguments) > 1:
        usage_error(USAGE, f"one params file at most, got {len(arguments)}")
    path = Path(arguments[0]) if arguments else Layout.discover().params_file
    load_params_or_exit(path)
    print(f"{shown(path)}: ok")


if __name__ == "__main__":
    main()
