"""`make prefect-server` and `make deploy` agree on the server and keep Prefect's home in the
checkout: a server on another port tells its UI that port's API (the UI reads it from
/ui-settings, which otherwise says port 4200 or PREFECT_API_URL, whatever --port is), and
`make deploy` finds that server without PREFECT_API_URL. `-o setup`: the environment is not
checked (nor rebuilt) for this.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

# Stands in for $(PYTHON) in `make deploy`: prints what flows.deploy would be given.
ENVIRONMENT_PROBE = (
    f'{sys.executable} -c \'import os; print(os.environ["PREFECT_API_URL"], '
    'os.environ["PREFECT_HOME"])\''
)


def _make(*arguments: str, environment: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "-o", "setup", *arguments],
        cwd=REPO_ROOT,
        env={**base, **(environment or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_prefect_server_gives_its_ui_its_own_port_and_the_checkouts_home() -> None:
    commands = _make("-n", "prefect-server", "PREFECT_PORT=4300")
    assert "PREFECT_UI_API_URL=http://127.0.0.1:4300/api" in commands
    assert "PREFECT_SERVER_API_PORT=4300" in commands
    assert f'PREFECT_HOME="{REPO_ROOT / ".prefect"}"' in commands
    assert "PREFECT_API_URL= " in commands  # a user's PREFECT_API_URL cannot mislead the UI
    assert "prefect server start --host 127.0.0.1 --port 4300" in commands
    assert "UI at http://127.0.0.1:4300, API at http://127.0.0.1:4300/api, Prefect home" in commands


def test_deploy_finds_make_prefect_servers_server_unless_told_another() -> None:
    probe = f"PYTHON={ENVIRONMENT_PROBE}"
    found = _make("deploy", "PREFECT_PORT=4300", probe).split()
    assert found == ["http://127.0.0.1:4300/api", str(REPO_ROOT / ".prefect")]
    told = {"PREFECT_API_URL": "http://10.0.0.7:4200/api", "PREFECT_HOME": "/tmp/elsewhere"}
    assert _make("deploy", probe, environment=told).split() == list(told.values())
