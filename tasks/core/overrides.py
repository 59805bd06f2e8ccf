"""The tuned values: a config override file (`models/tune/best_params.yaml`) and how it applies.

The tune stage writes the best values it found as dotted keys (``train.lr: 0.0042``); the
train stage applies them over params.yaml with :func:`apply_tuned`, through the same typed
validation as params.yaml itself, so a value the config would refuse stops with one line.
With ``tune.enabled: false`` the file is not applied at all: it may be left from an earlier search,
and the user asked for params.yaml's values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tasks.core.config import Params, with_overrides
from tasks.core.config_errors import read_yaml
from tasks.core.errors import ConfigError, UserError, shown, shown_values


def write_best_params(path: Path, values: dict[str, Any], source: str) -> None:
    """Write the tuned values to `path`, with a header saying where they came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
    header = f"# written by the tune stage ({source}); train applies these over params.yaml\n"
    path.write_text(header + yaml.safe_dump(clean, sort_keys=True))


def read_best_params(path: Path) -> dict[str, Any]:
    """The tuned values ({"train.lr": ...}) or {} when the file does not exist."""
    if not path.exists():
        return {}
    name = shown(path)
    try:
        values = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        problem = str(error).replace("\n", " ")
        raise UserError(f"{name}: not valid YAML ({problem}); re-run the tune stage") from None
    if not isinstance(values, dict):
        raise UserError(f"{name}: must map settings to values, got {type(values).__name__}")
    return values


def apply_tuned(params: Params, path: Path) -> tuple[Params, dict[str, Any]]:
    """`params` with the tuned values of `path` applied, and those values ({} when none).

    Nothing is applied (nor read) when `params.tune.enabled` is false.
    """
    if not params.tune.enabled:
        return params, {}
    tuned = read_best_params(path)
    if not tuned:
        return params, {}
    try:
        return with_overrides(params, tuned), tuned
    except ConfigError as error:
        raise ConfigError(f"{shown(path)}: {error}; re-run the tune stage") from None


def tuned_summary(params: Params, tuned: dict[str, Any], path: Path) -> str:
    """What the train stage says about the tuned values :func:`apply_tuned` returned."""
    if not params.tune.enabled:
        return "tune.enabled is false: training with params.yaml's values"
    if not tuned:
        return f"no tuned values in {shown(path)}: training with params.yaml's values"
    return f"using the tuned values from {shown(path)}: {shown_values(tuned)}"
