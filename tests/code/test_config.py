"""The typed config layer: bad params stop everything with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.core.config import Params, load_params
from tasks.core.errors import ConfigError
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
