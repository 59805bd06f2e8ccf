"""Secrets never live in params.yaml: finding keys that look like credentials, at any depth.

Credentials come from the environment or an AWS profile; `params.yaml` is committed and shown
in `dvc params diff`, so a secret there would leak into git history and every experiment.
"""

from __future__ import annotations

from typing import Any

# Key names that hold credentials in s3fs, botocore, fsspec and friends (`key`/`secret`/`token`
# are s3fs's own); a key containing any of these words is refused at any depth of the options.
SECRET_WORDS = (
    "secret",
    "token",
    "password",
    "passwd",
    "credential",
    "session",
    "access_key",
    "private_key",
    "api_key",
    "apikey",
)
SECRET_NAMES = {"key", "pass", "pwd", "auth", "authorization"}


def secret_looking_keys(options: Any, prefix: str) -> list[str]:
    """Dotted paths of every key in `options` (nested dicts and lists) that looks like a secret."""
    found: list[str] = []
    if isinstance(options, dict):
        for key, value in options.items():
            name = str(key).lower()
            path = f"{prefix}.{key}"
            if name in SECRET_NAMES or any(word in name for word in SECRET_WORDS):
                found.append(path)
            found += secret_looking_keys(value, path)
    elif isinstance(options, list):
        for index, value in enumerate(options):
            found += secret_looking_keys(value, f"{prefix}[{index}]")
    return found
