"""The registry lock, unique temporary names and crash consistency, on the tiny synthetic
repository of test_registry.py (no training): real processes, real flock, real SIGKILL.

A promote is killed with SIGKILL just before each of its writes in turn (`tests/kill_after.py`
wraps os.replace / os.rename, the last step of every atomic write) until one run completes:
after every kill `python -m tasks.registry --verify` finds the registry consistent, with one
champion, in exactly the old state or the new one, and `--clean` removes what the killed run
left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks.core.config import load_params
from tasks.core.layout import Layout
from tasks.promote import promote
from tasks.registry.lock import RegistryBusy, registry_lock
from tasks.registry.recovery import leftovers
from tasks.registry.store import Registry, integrity_problems, load_registry
from tests.code.test_registry import CLASSES, layout, write_reports  # noqa: F401 (a fixture)
from tests.conftest import REPO_ROOT, write_params
from tests.models import save_tiny_model

KILL_AFTER = REPO_ROOT / "tests" / "kill_after.py"
# everything but the comparison with the champion is switched off: the tiny models are untrained
LENIENT = {
    "gate": {
        "min_accuracy": 0.0,
        "min_invariance": 0.0,
        "min_class_accuracy": 0.0,
        "require_beats_baseline": False,
        "max_regression": 0.2,  # 60 test images cannot show a finer non-inferiority
    }
}
HOLD = (
    "import sys, time\nfrom pathlib import Path\nfrom tasks.registry.lock import registry_lock\n"
    "with registry_lock(Path(sys.argv[1]), 'holder test'):\n"
    "    print('held', flush=True)\n    time.sleep(120)\n"
)


def python(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, *arguments], cwd=cwd, env=environment, capture_output=True, text=True
    )


def holder(registry_dir: Path) -> subprocess.Popen[str]:
    """Another process holding the registry lock (until it is killed)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(registry_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def state(registry: Registry) -> tuple[Any, ...]:
    """The registry without its times: what a decision changed."""
    return (
        registry.champion,
        tuple((c.id, c.status, tuple(c.reasons), c.parent) for c in registry.candidates),
        tuple((e.kind, e.candidate) for e in registry.events),
    )


def test_a_held_registry_makes_others_wait_then_time_out_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry_dir = tmp_path / "models" / "registry"
    process = holder(registry_dir)
    try:
        with (
            pytest.raises(
                RegistryBusy, match=r"locked by holder test \(pid \d+ on .*gave up after"
            ),
            registry_lock(registry_dir, "promote", timeout=1.5),
        ):
            pass  # pragma: no cover (never reached)
        waited = capsys.readouterr().err
        assert "is locked by holder test" in waited and "promote waits for it" in waited
        assert isinstance(RegistryBusy("x"), TimeoutError)  # a stage exits 75: try again later
    finally:
        process.kill()
        process.wait()
    # the kernel gave the lock back when its holder died: taken at once, without waiting
    with registry_lock(registry_dir, "promote", timeout=0), registry_lock(registry_dir, "nested"):
        assert "promote (pid" in (registry_dir / ".lock").read_text()  # re-entrant
    assert (registry_dir / ".lock").read_text() == ""  # released: no stale name


def test_promote_waits_for_the_lock_and_then_judges_the_registry_as_it_is_then(
    layout: Layout,  # noqa: F811 (the fixture)
) -> None:
    write_params(layout.root, LENIENT)
    process = holder(layout.registry_dir)
    started = subprocess.Popen(
        [sys.executable, "-m", "tasks.promote"],
        cwd=layout.root,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert started.stderr is not None
    line = ""
    while "is locked by" not in line:  # blocks until promote says it waits
        line = started.stderr.readline()
        assert line, "promote ended without waiting for the lock"
    assert "is locked by holder test (pid" in line and "promote waits" in line, line
    assert not (layout.registry_dir / "registry.json").exists()  # nothing written meanwhile
    process.kill()
    process.wait()
    stdout, _ = started.communicate(timeout=120)
    assert started.returncode == 0 and "promote: promoted" in stdout
    assert load_registry(layout.registry_dir).champion is not None


def test_two_writers_of_one_json_file_never_share_a_temporary_file(tmp_path: Path) -> None:
    """With a fixed `<name>.tmp`, one writer renames the other's temporary file away and the
    other's rename fails (FileNotFoundError): unique names make both succeed."""
    target = tmp_path / "shared.json"
    code = (
        "import sys\nfrom tasks.core.io import write_json\n"
        "for index in range(300):\n    write_json(sys.argv[1], {'writer': sys.argv[2], "
        "'index': index, 'padding': 'x' * 20000})\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(target), name], env=environment, stderr=subprocess.PIPE
        )
        for name in ("a", "b")
    ]
    errors = [writer.communicate(timeout=120)[1] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], errors
    assert json.loads(target.read_text())["index"] == 299
    assert [path.name for path in tmp_path.iterdir()] == ["shared.json"]  # no temporary left


@pytest.mark.slow  # a process per stage or a real training: the full suite's tier
def test_promote_killed_before_any_of_its_writes_leaves_the_old_or_the_new_registry(
    layout: Layout,  # noqa: F811 (the fixture)
) -> None:
    write_params(layout.root, LENIENT)
    first = promote(load_params(layout.params_file), layout)
    assert first.decision == "promoted"
    old = state(load_registry(layout.registry_dir))
    # a retrain with other params that happens to give the same weights: a new candidate the
    # gate promotes (no worse than the champion, new params), retiring the first one
    save_tiny_model(layout.models_dir, 0, CLASSES, image_size=8, fingerprint="params-retrained")
    write_reports(layout)
    seen: dict[int, tuple[Any, ...]] = {}
    for kill_at in range(1, 10):
        run = python(
            str(KILL_AFTER), str(kill_at), str(layout.root), "tasks.promote", cwd=layout.root
        )
        verify = python("-m", "tasks.registry", "--verify", cwd=layout.root)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        registry = load_registry(layout.registry_dir)
        assert integrity_problems(layout.registry_dir) == []
        assert sum(c.status == "champion" for c in registry.candidates) == 1
        assert f"registry state: champion {registry.champion}" in verify.stdout
        seen[kill_at] = state(registry)
        if run.returncode == 0:
            break
        assert run.returncode == -signal.SIGKILL, run.stderr
        if leftovers(layout.registry_dir):
            assert "not clean" in verify.stdout
            cleaned = python("-m", "tasks.registry", "--clean", cwd=layout.root)
            assert "removed" in cleaned.stdout and "registry: clean" in cleaned.stdout
            assert leftovers(layout.registry_dir) == []
        else:
            assert "registry: clean" in verify.stdout
    else:
        pytest.fail("promote never completed")
    new = seen.pop(kill_at)
    assert kill_at >= 4  # killed before the entry's folder, registry.json and gate.json at least
    assert new != old and new[0] != old[0]  # the completed run promoted the new candidate
    assert all(killed in (old, new) for killed in seen.values()), seen
    assert seen[1] == seen[2] == old  # before registry.json is renamed: the old state
    assert leftovers(layout.registry_dir) == []
