"""The typed config layer: bad params stop everything with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.core.config import Params, load_params
from tasks.core.errors import ConfigError, UserError
from tasks.core.overrides import apply_tuned, read_best_params, tuned_summary
from tests.conftest import REPO_ROOT, merge, run, write_params


def _params_file(tmp_path: Path, overrides: dict) -> Path:
    params = merge(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), overrides)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _error(tmp_path: Path, overrides: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        load_params(_params_file(tmp_path, overrides))
    message = str(caught.value)
    assert "\n" not in message, "the error must be one line"
    return message


def test_the_committed_params_are_valid() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.data.source == "sklearn:digits"


def test_negative_learning_rate_names_key_value_and_bound(tmp_path: Path) -> None:
    message = _error(tmp_path, {"train": {"lr": -1}})
    assert "train.lr must be > 0, got -1" in message
    assert message.startswith(str(tmp_path / "params.yaml"))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"train": {"learning_rate": 0.1}}, "train.learning_rate"),
        ({"data": {"sourc": "x"}}, "data.sourc"),
    ],
)
def test_unknown_key_anywhere_is_named(tmp_path: Path, overrides: dict, key: str) -> None:
    message = _error(tmp_path, overrides)
    assert f"unknown key {key}" in message


def test_unknown_key_lists_what_is_allowed(tmp_path: Path) -> None:
    message = _error(tmp_path, {"train": {"learning_rate": 0.1}})
    assert "lr" in message.split("allowed here:")[1]


def test_wrong_type_and_choice(tmp_path: Path) -> None:
    assert "train.max_epochs" in _error(tmp_path, {"train": {"max_epochs": "ten"}})
    message = _error(tmp_path, {"data": {"channels": 2}})
    assert "data.channels must be one of" in message and "got 2" in message


@pytest.mark.parametrize("channels", ["auto", 1, 3])
def test_channels_accept_auto_one_and_three(tmp_path: Path, channels: object) -> None:
    params = load_params(_params_file(tmp_path, {"data": {"channels": channels}}))
    assert params.data.channels == channels


def test_channels_default_to_auto() -> None:
    assert Params().data.channels == "auto"
    assert load_params(REPO_ROOT / "params.yaml").data.channels == "auto"


@pytest.mark.parametrize("channels", [2, "rgb", 0])
def test_other_channels_are_refused_in_one_line(tmp_path: Path, channels: object) -> None:
    message = _error(tmp_path, {"data": {"channels": channels}})
    assert "data.channels must be one of" in message and "auto" in message, message
    assert f"got {channels!r}" in message or f"got {channels}" in message, message


def test_tune_metric_and_mode_must_agree(tmp_path: Path) -> None:
    message = _error(tmp_path, {"tune": {"metric": "val_loss", "mode": "max"}})
    assert "tune.mode must be 'min' for tune.metric val_loss, got 'max'" in message


def test_search_space_values_must_be_valid_settings(tmp_path: Path) -> None:
    space = {"model": {"dropout": {"type": "uniform", "low": 0.1, "high": 1.5}}}
    message = _error(tmp_path, {"tune": {"space": space}})
    assert "tune.space.model.dropout allows 1.5" in message and "< 1" in message
    space = {"model": {"arch": {"type": "choice", "values": ["cnn", "vgg"]}}}
    message = _error(tmp_path, {"tune": {"space": space}})
    assert "tune.space.model.arch allows 'vgg'" in message
    space = {"train": {"batch_size": {"type": "uniform", "low": 16, "high": 256}}}
    message = _error(tmp_path, {"tune": {"space": space}})
    assert "train.batch_size takes whole numbers; use type: int" in message
    # uniform never draws its upper bound, so dropout up to 1.0 is a valid range
    space = {"model": {"dropout": {"type": "uniform", "low": 0.0, "high": 1.0}}}
    load_params(_params_file(tmp_path, {"tune": {"space": space}}))


def test_fractions_must_leave_training_data(tmp_path: Path) -> None:
    message = _error(tmp_path, {"data": {"val_fraction": 0.5, "test_fraction": 0.45}})
    assert "data.val_fraction + data.test_fraction must be < 0.9" in message


def test_secrets_are_refused_in_storage_options(tmp_path: Path) -> None:
    message = _error(tmp_path, {"data": {"storage_options": {"secret": "abc"}}})
    assert "data.storage_options must not hold secrets" in message
    assert "AWS_SECRET_ACCESS_KEY" in message


def test_not_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert "not valid YAML" in str(caught.value) and "\n" not in str(caught.value)


def test_cli_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    path = _params_file(tmp_path, {"train": {"lr": -1}})
    result = run(["python", "-m", "tasks.core.config", str(path)], REPO_ROOT, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.lr must be > 0, got -1" in lines[0]


@pytest.mark.parametrize("overrides", [{"train": {"lr": -1}}, {"data": {"nonsense": True}}])
def test_dvc_repro_stops_before_any_stage_work(repo: Path, overrides: dict) -> None:
    write_params(repo, overrides)
    run(["python", "-m", "tasks.source"], repo, check=False)
    result = run(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert "train.lr must be > 0" in result.stderr or "unknown key data.nonsense" in result.stderr
    assert not (repo / "data" / "raw").exists(), "ingest did work despite the bad params"


@pytest.mark.parametrize("devices", ["two", 0, -1, 1.5, True, None])
def test_devices_must_be_a_whole_number_or_auto(tmp_path: Path, devices: object) -> None:
    message = _error(tmp_path, {"train": {"devices": devices}})
    assert message.endswith(
        f': train.devices must be a whole number >= 1 or "auto", got {devices!r}'
    )


@pytest.mark.parametrize("devices", ["auto", 2, "2"])
def test_devices_accepts_a_count_or_auto(tmp_path: Path, devices: object) -> None:
    params = load_params(_params_file(tmp_path, {"train": {"devices": devices}}))
    assert params.train.devices == (2 if devices == "2" else devices)


PAIR = "must be a list of 2 numbers like"
WRONG_TYPES = [  # (params.yaml overrides, the message after the file name)
    (
        {"train": {"gradient_clip": "none"}},
        "train.gradient_clip must be a number or null, got 'none'",
    ),
    ({"train": {"batch_size": 1.5}}, "train.batch_size must be a whole number, got 1.5"),
    ({"tune": {"enabled": "maybe"}}, "tune.enabled must be true or false, got 'maybe'"),
    ({"augment": {"scale": "big"}}, f"augment.scale {PAIR} [0.9, 1.1], got 'big'"),
    ({"augment": {"scale": [1, 2, 3]}}, f"augment.scale {PAIR} [0.9, 1.1], got [1, 2, 3]"),
    ({"augment": {"scale": [1]}}, f"augment.scale {PAIR} [0.9, 1.1], got [1]"),
    (
        {"augment": {"erase_scale": ["a", 0.1]}},
        f"augment.erase_scale {PAIR} [0.02, 0.1], got 'a' at position 0",
    ),
    ({"data": {"classes": "cat"}}, "data.classes must be a list like [a, b] or null, got 'cat'"),
    (
        {"data": {"classes": ["cat", 7]}},
        "data.classes[1] must be text, got 7 (put it in quotes: '7')",
    ),
    (
        {"data": {"storage_options": "x"}},
        "data.storage_options must be a mapping (key: value), got 'x'",
    ),
    (
        {"evaluate": {"baseline_c": {"lr": 1.0}}},
        "evaluate.baseline_c has an unknown key 'lr' (allowed: 'logistic_regression' or 'svc')",
    ),
    (
        {"tune": {"space": {"data": {}}}},
        "tune.space has an unknown key 'data' (allowed: 'train', 'model' or 'augment')",
    ),
    ({"train": "fast"}, "train must be a mapping (key: value), got 'fast'"),
]


@pytest.mark.parametrize(("overrides", "expected"), WRONG_TYPES)
def test_wrong_types_read_as_the_key_and_what_it_takes(
    tmp_path: Path, overrides: dict, expected: str
) -> None:
    message = _error(tmp_path, overrides)
    assert message == f"{tmp_path / 'params.yaml'}: {expected}"
    for internal in ("input should be", "literal[", "[key]", "valid tuple", "instance of"):
        assert internal not in message.lower()


TWICE = [  # (params.yaml, the message after the file name)
    (
        "seed: 1\ntrain:\n  lr: 0.1\n  batch_size: 8\n  lr: 0.2\n",
        "train.lr is set twice (lines 3 and 5)",
    ),
    ("train:\n  lr: 0.1\nseed: 1\ntrain:\n  batch_size: 8\n", "train is set twice (lines 1 and 4)"),
    (
        "tune:\n  space:\n    model:\n      dropout: {type: uniform, low: 0, type: int}\n",
        "tune.space.model.dropout.type is set twice (lines 4 and 4)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), TWICE)
def test_a_key_given_twice_is_refused_with_both_lines(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == f"{path}: {expected}; delete one"


def test_yaml_anchors_and_merge_keys_still_load(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: &base\n  lr: 0.1\n  <<: {batch_size: 8}\nmodel:\n  dropout: 0.3\n")
    params = load_params(path)
    assert (params.train.lr, params.train.batch_size, params.model.dropout) == (0.1, 8, 0.3)


def test_a_tuned_value_given_twice_is_refused(tmp_path: Path) -> None:
    best = tmp_path / "best_params.yaml"
    best.write_text("train.lr: 0.01\ntrain.lr: 0.02\n")
    with pytest.raises(UserError) as caught:
        read_best_params(best)
    assert "train.lr is set twice (lines 1 and 2)" in str(caught.value)


def test_a_disabled_search_leaves_params_yaml_values_alone(tmp_path: Path) -> None:
    """A best_params.yaml left from an earlier search is not applied with tune.enabled false."""
    best = tmp_path / "best_params.yaml"
    best.write_text("train.lr: 0.0042\n")
    enabled = load_params(_params_file(tmp_path, {"tune": {"enabled": True}}))
    params, tuned = apply_tuned(enabled, best)
    assert (params.train.lr, tuned) == (0.0042, {"train.lr": 0.0042})
    assert tuned_summary(params, tuned, best).startswith("using the tuned values from ")
    disabled = load_params(_params_file(tmp_path, {"tune": {"enabled": False}}))
    params, tuned = apply_tuned(disabled, best)
    assert (params, tuned) == (disabled, {})
    assert params.train.lr == disabled.train.lr != 0.0042
    assert tuned_summary(params, tuned, best) == (
        "tune.enabled is false: training with params.yaml's values"
    )
