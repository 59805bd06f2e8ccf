"""Secret-looking keys are refused at any depth of data.storage_options, naming where."""

from __future__ import annotations

import pytest

from tasks.core.config import DataConfig, Params, secret_looking_keys, with_overrides
from tasks.core.errors import ConfigError


@pytest.mark.parametrize(
    "options",
    [
        {"secret": "abc"},
        {"key": "AKIA..."},
        {"client_kwargs": {"aws_secret_access_key": "abc"}},
        {"client_kwargs": {"aws_session_token": "abc"}},
        {"config_kwargs": {"proxies": {"password": "abc"}}},
        {"client_kwargs": {"AWS_ACCESS_KEY_ID": "AKIA..."}},
        {"headers": [{"Authorization": "Bearer x"}]},
        {"credentials": {"user": "me"}},
    ],
)
def test_a_secret_at_any_depth_is_refused(options: dict) -> None:
    params = Params()
    with pytest.raises(ConfigError, match=r"data\.storage_options must not hold secrets") as caught:
        with_overrides(params, {"data.storage_options": options})
    assert "found data.storage_options." in str(caught.value)


def test_ordinary_options_pass() -> None:
    options = {
        "endpoint_url": "http://127.0.0.1:9000",
        "client_kwargs": {"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:9000"},
        "config_kwargs": {"s3": {"addressing_style": "path"}},
        "anon": False,
    }
    assert DataConfig(storage_options=options).storage_options == options
    assert secret_looking_keys(options, "x") == []


def test_the_message_names_every_path() -> None:
    found = secret_looking_keys(
        {"client_kwargs": {"aws_session_token": 1, "region_name": "x"}, "token": 2}, "opts"
    )
    assert found == ["opts.client_kwargs.aws_session_token", "opts.token"]
