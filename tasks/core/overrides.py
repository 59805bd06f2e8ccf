"""Overrides of params.yaml: the tuned values, and a flow run's `--set KEY=VALUE`.

The tune stage writes the best values it found as dotted keys (``train.lr: 0.0042``); the
train stage applies them over params.yaml with :func:`apply_tuned`, through the same typed
validation as params.yaml itself, so a value the config would refuse stops with one line.
With ``tune.enabled: false`` the file is not applied at all: it may be left from an earlier search,
and the user asked for params.yaml's values.

A run of the training flow can override keys the way ``dvc exp run -S train.lr=0.001`` does:
:func:`set_params` checks the new values with the typed config first (a bad one stops with the
config's one-line error, exit 2, before any stage runs), then writes them into params.yaml with
its comments kept, so DVC sees the changed params and reruns exactly the stages that read them.
Run it with ``python -m tasks.core.overrides --set train.lr=0.001 [--set ...]``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq
from ruamel.yaml.representer import RoundTripRepresenter

from tasks.core.config import Params, load_params, with_overrides
from tasks.core.config_errors import read_yaml
from tasks.core.errors import ConfigError, UserError, shown, shown_values
from tasks.core.layout import Layout
from tasks.core.runner import print_help, usage_error, wants_help


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


def parse_assignment(text: str) -> tuple[str, Any]:
    """``train.lr=0.001`` -> ("train.lr", 0.001): the value is read as YAML, as `dvc exp run -S`
    reads it (``true``, ``null``, ``[0.9, 1.1]``, ``cnn``)."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise ConfigError(f"override {text!r} must be KEY=VALUE, e.g. train.lr=0.001")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: the value is not valid YAML") from None


def _null(representer: RoundTripRepresenter, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def _as_written(value: Any) -> Any:
    """A list in flow style (``[0.8, 1.2]``), as params.yaml writes its lists."""
    if not isinstance(value, list):
        return value
    sequence = CommentedSeq(value)
    sequence.fa.set_flow_style()
    return sequence


def set_params(path: Path, overrides: dict[str, Any]) -> list[str]:
    """Write `overrides` (dotted keys) into the params file at `path`, keeping its comments and
    layout; returns one ``key: old -> new`` line per key (nothing for an unchanged value).

    Raises:
        ConfigError: the file or an override is invalid; then nothing is written.
    """
    params = load_params(path)
    with_overrides(params, overrides)  # every value checked before the file is touched
    document_format = YAML()  # round trip: comments, order and quoting survive
    document_format.preserve_quotes = True
    document_format.width = 4096  # never fold a long commented line
    document_format.representer.add_representer(type(None), _null)  # `null`, not an empty value
    with open(path, encoding="utf-8") as handle:
        document = document_format.load(handle)
    changes = []
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        old = document[section][name]
        if old != value:
            document[section][name] = _as_written(value)
            changes.append(f"{key}: {old!r} -> {value!r}")
    if changes:
        staging = path.with_name(f".{path.name}.partial")
        with open(staging, "w", encoding="utf-8") as handle:
            document_format.dump(document, handle)
        staging.replace(path)
    return changes


USAGE = "usage: python -m tasks.core.overrides [-h] --set KEY=VALUE [--set KEY=VALUE ...]"
HELP = f"""{USAGE}

Override params.yaml keys for the next run, the way `dvc exp run -S KEY=VALUE` does: every value
is checked by the typed config first (a bad one: one `error:` line, exit 2, nothing written),
then written into params.yaml with its comments kept. DVC then reruns exactly the stages that
read the changed keys. The training flow runs this for its `overrides` parameter.

Reads and writes the params.yaml of the repository around the working directory; prints one
line per changed key (`train.lr: 0.003 -> 0.001`), or that nothing changed."""


def main(arguments: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if arguments is None else arguments)
    if wants_help(arguments):
        print_help(HELP)
    assignments = []
    while arguments:
        flag, _, value = arguments.pop(0).partition("=")
        if flag != "--set":
            usage_error(USAGE, f"unknown argument {flag!r}")
        if not value:
            if not arguments:
                usage_error(USAGE, "--set needs KEY=VALUE")
            value = arguments.pop(0)
        assignments.append(value)
    if not assignments:
        usage_error(USAGE, "nothing to set")
    path = Layout.discover().params_file
    try:
        changes = set_params(path, dict(map(parse_assignment, assignments)))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for change in changes or ["nothing changed (every value was already set)"]:
        print(f"{shown(path)}: {change}")


if __name__ == "__main__":
    main()
