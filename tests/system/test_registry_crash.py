"""The registry under crashes and concurrent writers, for real: continual learning and promote on
copies of the trained repository (real fine-tuning, real DVC, real BentoML builds and servers).

- Continual learning is killed with SIGKILL just before each of its registry writes in turn
  (`tests/kill_after.py`; the bento is built between the two) until a run completes: after
  every kill `python -m tasks.registry --verify` finds one champion and the old state or the
  new one, never a mix.
- A bento that fails (its bentofile is missing: a real build failure) leaves the champion as it
  was and says to run again; the rerun on the same batch releases the challenger.
- Two continual-learning runs and a promote started at once: every promotion the registry
  records was judged against the champion it replaced; a challenger fine-tuned from a champion
  that was replaced meanwhile is recorded as rejected, and its run exits 75 (run it again).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest

from tasks.registry.recovery import leftovers
from tasks.registry.store import Registry, integrity_problems, load_registry
from tests.code.test_registry_lock import KILL_AFTER, state
from tests.conftest import VENV_BIN, run, write_params
from tests.system.test_continual import bentos, ensure_champion, inverted_batch

# few epochs: the inverted batch is learnt in three (the gate still decides for real)
FAST = {"continual": {"epochs": 3}}
LEARN = ["python", "-m", "tasks.continual.run", "--batch"]


@pytest.fixture
def repo(trained_repo: Path, tmp_path: Path) -> Path:
    """A copy of the trained repository with a champion and cheap continual learning."""
    repo = Path(shutil.copytree(trained_repo, tmp_path / "repo", symlinks=True))
    ensure_champion(repo)
    write_params(repo, FAST)
    return repo


def registry_of(repo: Path) -> Registry:
    return load_registry(repo / "models" / "registry")


def verified(repo: Path) -> str:
    """`--verify`'s output; the registry is consistent with exactly one champion."""
    result = run(["python", "-m", "tasks.registry", "--verify"], repo, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    registry = registry_of(repo)
    assert integrity_problems(repo / "models" / "registry") == []
    assert [c.id for c in registry.candidates if c.status == "champion"] == [registry.champion]
    assert f"registry state: champion {registry.champion}" in result.stdout
    return result.stdout


def served_latest(repo: Path) -> str:
    """The version of `sixfold-classifier:latest` in the project's BentoML store."""
    return (repo / "models" / "bentoml" / "models" / "sixfold-classifier" / "latest").read_text()


def continual_reports(repo: Path) -> dict[str, dict[str, Any]]:
    folder = repo / "reports" / "continual"
    return {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}


def champions_before_each_promotion(registry: Registry) -> dict[str, str | None]:
    """Promoted candidate -> the champion it replaced, from the registry's history."""
    replaced: dict[str, str | None] = {}
    current = None
    for event in registry.events:
        if event.kind == "promoted":
            replaced[event.candidate] = current
            current = event.candidate
    assert current == registry.champion
    return replaced


@pytest.mark.slow
def test_continual_learning_killed_before_each_registry_write_leaves_one_champion(
    repo: Path, tmp_path: Path
) -> None:
    batch = inverted_batch(repo, tmp_path / "inverted")
    registry_dir = repo / "models" / "registry"
    old = state(registry_of(repo))
    seen: dict[int, tuple[Any, ...]] = {}
    for kill_at in range(1, 6):
        command = ["python", str(KILL_AFTER), str(kill_at), str(registry_dir), *LEARN[2:]]
        result = run([*command, str(batch)], repo, check=False)
        shown = verified(repo)
        seen[kill_at] = state(registry_of(repo))
        if result.returncode == 0:
            break
        assert result.returncode == -signal.SIGKILL, result.stdout[-2000:] + result.stderr[-3000:]
        if leftovers(registry_dir):  # what the killed run copied: garbage, named, then removed
            assert "not clean" in shown
            assert (
                "registry: clean" in run(["python", "-m", "tasks.registry", "--clean"], repo).stdout
            )
    else:
        pytest.fail("continual learning never completed")
    new = seen.pop(kill_at)
    assert kill_at >= 3  # killed before the challenger's folder and before registry.json
    assert all(killed == old for killed in seen.values()), seen  # registry.json is the commit
    report = next(iter(continual_reports(repo).values()))
    assert report["promoted"], report["reasons"]
    assert new[0] == report["challenger"] == registry_of(repo).champion != old[0]
    assert report["bento"].split(":")[1] in bentos(repo) and served_latest(repo) == new[0]
    assert "registry: clean" in verified(repo)


@pytest.mark.slow
def test_a_failed_bento_keeps_the_champion_and_a_rerun_releases_the_challenger(
    repo: Path, tmp_path: Path
) -> None:
    parent = registry_of(repo).champion
    batch = inverted_batch(repo, tmp_path / "inverted")
    bentofile = repo / "deploy" / "bentofile.yaml"
    bentofile.rename(tmp_path / "bentofile.yaml")  # the build fails: a real missing file

    failed = run([*LEARN, str(batch)], repo, check=False)
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "its bento failed" in errors[0] and "bentofile.yaml" in errors[0]
    (report,) = continual_reports(repo).values()
    assert not report["promoted"] and report["bento_error"] and report["retry"]
    registry = registry_of(repo)
    assert registry.champion == report["champion_after"] == parent  # the champion stays
    challenger = registry.entry(report["challenger"])
    assert challenger.status == "rejected" and "its bento failed" in challenger.reasons[0]
    assert served_latest(repo) == parent  # the store serves the champion again
    verified(repo)

    (tmp_path / "bentofile.yaml").rename(bentofile)
    again = run([*LEARN, str(batch)], repo, check=False)  # the same batch: learnt again
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "was learnt from before" not in again.stdout
    (report,) = continual_reports(repo).values()
    registry = registry_of(repo)
    assert report["promoted"] and report["retry"] is None and report["bento_error"] is None
    assert registry.champion == report["challenger"] != parent
    assert registry.champion_entry().parent == parent
    assert champions_before_each_promotion(registry)[registry.champion] == parent
    package = json.loads((repo / "reports" / "package.json").read_text())
    assert package["champion"] == registry.champion and package["passed"]
    assert report["bento"] == package["bento"] and report["bento"].split(":")[1] in bentos(repo)
    assert served_latest(repo) == registry.champion
    assert "registry: clean" in verified(repo)


def retrained_candidate(repo: Path) -> None:
    """models/ as a retrain with other params that gives the champion's weights: a new candidate
    (its card differs) that the gate promotes over the champion (no worse, new params)."""
    card_file = repo / "models" / "model.json"
    card = json.loads(card_file.read_text())
    card["params_fingerprint"] = "retrained-with-other-params"
    card_file.write_text(json.dumps(card, indent=2))


@pytest.mark.slow
def test_two_continual_runs_and_a_promote_at_once_only_promote_over_the_champion_they_judged(
    repo: Path, tmp_path: Path
) -> None:
    first = registry_of(repo).champion
    # zero disagreements on a few hundred test images show non-inferiority within 0.05
    write_params(repo, {"gate": {"max_regression": 0.05}})
    retrained_candidate(repo)
    batches = [
        inverted_batch(repo, tmp_path / name, take) for name, take in (("a", "head"), ("b", "tail"))
    ]
    environment = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    commands = [[*LEARN, str(batch)] for batch in batches] + [["python", "-m", "tasks.promote"]]
    started = [
        subprocess.Popen(command, cwd=repo, env=environment, text=True, stdout=PIPE, stderr=PIPE)
        for command in commands
    ]
    outputs = [process.communicate(timeout=1500) for process in started]
    codes = [process.returncode for process in started]
    assert codes[2] == 0, outputs[2]
    assert all(code in (0, 75) for code in codes[:2]), outputs

    verified(repo)
    registry = registry_of(repo)
    replaced = champions_before_each_promotion(registry)
    gate = json.loads((repo / "reports" / "gate.json").read_text())
    promoted_by_promote = gate["candidate"]["id"]
    assert gate["decision"] == "promoted", gate["reasons"]
    assert replaced[promoted_by_promote] == gate["previous_champion"]["id"]
    assert registry.entry(promoted_by_promote).parent == gate["previous_champion"]["id"]
    reports = list(continual_reports(repo).values())
    assert len(reports) == 2
    for batch, code, (_, stderr) in zip(batches, codes, outputs, strict=False):
        report = next(report for report in reports if report["source"] == str(batch))
        challenger = registry.entry(report["challenger"])
        if report["promoted"]:  # judged against the champion it replaced
            assert code == 0 and challenger.status in ("champion", "retired")
            assert replaced[report["challenger"]] == report["champion"] == challenger.parent
        elif report["retry"]:  # fine-tuned from a champion replaced meanwhile: never promoted
            assert code == 75 and "never compared with" in report["retry"] in stderr
            assert challenger.status == "rejected" and report["challenger"] not in replaced
    # the registry's first champion was replaced exactly once, by a model compared with it
    assert list(replaced.values()).count(first) == 1
