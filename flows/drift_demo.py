"""`make drift-demo`: drift found, learnt from and fixed, end to end, on the project's own model.

Runs as a Prefect flow (`drift-demo`) whose subflows are the real `drift-monitor` and
`continual-learning`, in a scratch copy of the repository (the workspace's champion, registry
and data stay as they are; ``--keep`` keeps the copy to look at):

1. the simulator (`tasks.monitoring.simulate`) writes clean traffic (the validation split,
   unchanged: held out from training and from the monitor's reference, the champion's test
   images), a clean copy of the test split (to measure accuracy on) and a drifted labelled
   batch (the train and validation images, inverted by default);
2. the champion is served (`bentoml serve`, the packaged model) and gets the clean traffic as
   requests; the monitor checks the prediction log: no drift expected;
3. it gets a seeded sample of the drifted images in `monitor.consecutive` rounds (the shipped
   setting, 2), the monitor checking after each: drift expected each time, and continual
   learning due at the last (the monitor starts it only after that many drift verdicts in a
   row; the demo stops with one line if it is not due);
4. continual learning takes the drifted batch as a new labelled data version, fine-tunes the
   champion with replay, and promotes the challenger only through its gate;
5. the old champion (still served) and the new one (served afterwards) answer the old test
   split and the batch's own test part over HTTP: the accuracies are what a client got (the
   test split is sent after the last check, so the monitor never judges its own reference).

Writes reports/drift_demo.json (``drift_on_drifted``: every drifted check found drift,
``drift_on_clean``, ``continual_due``, ``promoted``, ``drifted_acc_before/after``,
``old_acc_before/after`` as fractions, plus details) and reports/drift_demo.png in the
workspace. Needs a champion: run ``make run`` first (``make
drift-demo`` does). Flows know no tensors: images travel as PNG files and HTTP requests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from prefect import flow
from prefect.states import State

from flows.continual import continual_learning
from flows.monitor import drift_monitor
from flows.stages import python_command
from tasks.core.config import load_params_or_exit
from tasks.core.errors import shown
from tasks.core.layout import Layout
from tasks.core.options import parse_options
from tasks.core.plotting import pyplot, save_figure
from tasks.core.runner import usage_error
from tasks.packaging.server import bentoml_serve_command, free_port, running
from tasks.registry.store import load_registry

USAGE = """\
usage: python -m flows.drift_demo [-h] [--kind KIND] [--requests N] [--keep]

Show drift monitoring and continual learning end to end on the champion, in a scratch copy of
the repository: serve it, send clean then drifted requests, let the monitor judge each, learn
from the drifted labelled batch, serve the result and measure both models over HTTP. Writes
reports/drift_demo.json and reports/drift_demo.png; the workspace's registry is not changed.

options:
  -h, --help     show this message and exit (nothing is run)
  --kind KIND    the drift: invert (default), rotate, thicken, noise
  --requests N   drifted images sent, over monitor.consecutive checks (default 300)
  --keep         keep the scratch copy and say where it is

exit codes: 0 the demo ran (its verdicts are in the report); 1 no champion yet (make run) or a
step failed; 2 a bad argument.
"""

COPY_IGNORED = (".venv", "logs", "__pycache__", ".pytest_cache", ".ruff_cache")
IMAGES_PER_REQUEST = 8
# The service's contract, as a client sees it (its modules import torch or BentoML, which a flow
# must not): the multipart field of POST /predict (tasks.packaging.validation.FIELD) and the
# variable naming the served model version (tasks.serving.store.TAG_VARIABLE, MODEL_NAME).
FIELD = "images"
TAG_VARIABLE = "SIXFOLD_MODEL_TAG"
MODEL_NAME = "sixfold-classifier"


def scratch_copy(root: Path, destination: Path) -> Path:
    """The repository at `destination`: code, git, DVC cache, data, models, reports; no
    environment, no prediction log and no monitor history (the demo's own start fresh)."""
    shutil.copytree(root, destination, symlinks=True, ignore=shutil.ignore_patterns(*COPY_IGNORED))
    shutil.rmtree(destination / "reports" / "monitor", ignore_errors=True)
    return destination


def checked(state: State, what: str) -> Any:
    """A subflow's result; a failed subflow stops the demo with one line (its error is above)."""
    if state.is_failed():
        raise SystemExit(f"error: {what} failed ({state.message}); its error is above")
    return state.result()


def simulate(repo: Path, kind: str, splits: str, out: Path) -> Path:
    command = python_command("-m", "tasks.monitoring.simulate", "--kind", kind)
    subprocess.run([*command, "--splits", splits, "--out", str(out)], cwd=repo, check=True)
    return out


def latest_continual(repo: Path) -> bool:
    """Whether the newest drift check in `repo` said continual learning is due."""
    reports = sorted((repo / "reports" / "monitor").glob("*Z.json"))
    return bool(reports) and json.loads(reports[-1].read_text())["continual"]["start"] is True


def labelled_files(folder: Path) -> list[tuple[Path, str]]:
    """(file, label) of a class-folder batch, sorted."""
    return [(path, path.parent.name) for path in sorted(folder.glob("*/*.png"))]


def test_part_files(repo: Path, version: str) -> list[tuple[Path, str]]:
    """(file, label) of a continual batch's own test part (leaked images left out)."""
    folder = repo / "data" / "batches" / version
    split = pd.read_csv(folder / "split.csv", dtype=str, keep_default_na=False)
    chosen = split[(split["split"] == "test") & (split["leaked"] == "")]
    files = folder / "raw" / "files"
    pairs = zip(chosen["path"], chosen["label"], strict=True)
    return [(files / path, label) for path, label in pairs]


def served_accuracy(url: str, files: list[tuple[Path, str]]) -> float:
    """The share of `files` the server at `url` labels right (every answer must be a 200)."""
    right = 0
    with httpx.Client(timeout=60) as client:
        for start in range(0, len(files), IMAGES_PER_REQUEST):
            chunk = files[start : start + IMAGES_PER_REQUEST]
            fields = [(FIELD, (path.name, path.read_bytes(), "image/png")) for path, _ in chunk]
            response = client.post(f"{url}/predict", files=fields)
            response.raise_for_status()
            answers = response.json()["predictions"]
            right += sum(a["label"] == label for a, (_, label) in zip(answers, chunk, strict=True))
    return right / len(files)


@contextmanager
def serving(repo: Path, champion: str) -> Iterator[str]:
    """The packaged `champion` served from `repo`'s model store on a free port; yields its URL."""
    layout = Layout(repo)
    environment = {
        **os.environ,
        "BENTOML_HOME": str(layout.bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "SIXFOLD_LOG_DIR": str(repo / "logs" / "predictions"),
        TAG_VARIABLE: f"{MODEL_NAME}:{champion}",
    }
    environment.pop("SIXFOLD_API_KEY", None)
    port = free_port()
    command = bentoml_serve_command("deploy.service:Classifier", port)
    with running(command, port, environment, repo) as server:
        yield server.url


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.6))
    groups = ("old test split", f"drifted ({result['kind']}) test part")
    before = (result["old_acc_before"], result["drifted_acc_before"])
    after = (result["old_acc_after"], result["drifted_acc_after"])
    positions = np.arange(len(groups))
    for offset, values, name in ((-0.2, before, "champion before"), (0.2, after, "served after")):
        bars = axis.bar(positions + offset, values, width=0.4, label=name)
        axis.bar_label(bars, fmt="%.3f", fontsize=8)
    axis.set_xticks(positions, groups)
    axis.set(ylim=(0, 1.3), ylabel="accuracy over HTTP")
    verdict = "promoted" if result["promoted"] else "not promoted"
    axis.set_title(f"drift demo: challenger {verdict}")
    axis.legend(loc="upper center", ncol=2, fontsize=8)
    save_figure(figure, path)


@flow(name="drift-demo", log_prints=True)
def drift_demo(
    repo: str = ".", kind: str = "invert", requests: int = 300, keep: bool = False
) -> dict[str, Any]:
    """The demo (see the module docstring); returns what reports/drift_demo.json holds."""
    root = Path(repo).resolve()
    layout = Layout(root)
    params = load_params_or_exit(layout.params_file)
    champion = load_registry(layout.registry_dir).champion
    if champion is None:
        raise SystemExit(f"error: {shown(layout.registry_dir)} has no champion; run make run first")
    per_check = requests // params.monitor.consecutive
    if per_check < params.monitor.min_records:
        raise SystemExit(
            f"error: --requests {requests} over monitor.consecutive = "
            f"{params.monitor.consecutive} checks is {per_check} per check, fewer than "
            f"monitor.min_records = {params.monitor.min_records}: the checks could not decide"
        )
    scratch = Path(tempfile.mkdtemp(prefix="sixfold-drift-demo-"))
    try:
        work = scratch_copy(root, scratch / "repo")
        traffic = labelled_files(simulate(work, "none", "val", scratch / "clean-traffic"))
        old_test = labelled_files(simulate(work, "none", "test", scratch / "clean"))
        drifted = simulate(work, kind, "train,val", scratch / "drifted")
        rng = np.random.default_rng(params.seed)
        drifted_files = labelled_files(drifted)
        # in the permutation's order, not by class: each round of checks sees every class
        sent = [drifted_files[i] for i in rng.permutation(len(drifted_files))[:requests]]
        rounds = params.monitor.consecutive
        with serving(work, champion) as url:
            served_accuracy(url, traffic)
            on_clean = checked(drift_monitor(str(work), return_state=True), "drift check 1")
            on_drifted, drifted_sent = [], 0.0
            for number, part in enumerate(np.array_split(np.arange(len(sent)), rounds), 2):
                drifted_sent += served_accuracy(url, [sent[i] for i in part]) * len(part)
                state = drift_monitor(str(work), return_state=True)
                on_drifted.append(checked(state, f"drift check {number}"))
            due = latest_continual(work)
            if not due:
                raise SystemExit(
                    f"error: continual learning is not due after {rounds} drifted check(s) "
                    f"(verdicts {on_drifted}); see {shown(work / 'reports' / 'monitor')}"
                )
            old_before = served_accuracy(url, old_test)  # after the last check: never judged
            learning = continual_learning(str(drifted), str(work), return_state=True)
            learnt = checked(learning, "continual learning")
            new_test = test_part_files(work, learnt["version"])
            drifted_before = served_accuracy(url, new_test)
        served_after = load_registry(Layout(work).registry_dir).champion or champion
        with serving(work, served_after) as url:
            old_after = served_accuracy(url, old_test)
            drifted_after = served_accuracy(url, new_test)
        result = {
            "drift_on_drifted": all(verdict is True for verdict in on_drifted),
            "drift_on_clean": on_clean is True,
            "drifted_checks": on_drifted,
            "consecutive": rounds,
            "continual_due": due,
            "promoted": bool(learnt["promoted"]),
            "drifted_acc_before": round(drifted_before, 4),
            "drifted_acc_after": round(drifted_after, 4),
            "old_acc_before": round(old_before, 4),
            "old_acc_after": round(old_after, 4),
            "kind": kind,
            "champion_before": champion,
            "served_after": served_after,
            "batch_version": learnt["version"],
            "images": {
                "clean_requests": len(traffic),
                "old_test": len(old_test),
                "drifted_requests": len(sent),
                "drifted_test_part": len(new_test),
            },
            "served_acc_on_drifted_requests": round(drifted_sent / len(sent), 4),
            "offline": {"old_test": learnt["old_test"], "new_test": learnt["new_test"]},
        }
        target = layout.reports_dir / "drift_demo.json"
        target.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        plot(result, target.with_suffix(".png"))
        print(
            f"drift-demo: drift on drifted {result['drift_on_drifted']}, on clean "
            f"{result['drift_on_clean']}; promoted {result['promoted']}; drifted test part "
            f"{drifted_before:.4f} -> {drifted_after:.4f}, old test split {old_before:.4f} -> "
            f"{old_after:.4f} (served, over HTTP); report {shown(target)}"
        )
        return result
    finally:
        if keep:
            print(f"drift-demo: the scratch copy is kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _options(arguments: list[str]) -> dict[str, Any]:
    usage = USAGE.splitlines()[0]
    given = parse_options(arguments, usage, valued=("--kind", "--requests"), switches=("--keep",))
    kind, requests = str(given.get("--kind", "invert")), str(given.get("--requests", "300"))
    if kind not in ("invert", "rotate", "thicken", "noise"):
        usage_error(usage, f"--kind must be invert, rotate, thicken or noise, got {kind!r}")
    if not (requests.isdigit() and int(requests) > 0):
        usage_error(usage, f"--requests must be a positive integer, got {requests!r}")
    return {"kind": kind, "requests": int(requests), "keep": bool(given.get("--keep"))}


def main(arguments: list[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if arguments is None else arguments)
    if any(argument in ("-h", "--help") for argument in arguments):
        print(USAGE, end="")
        return
    options = _options(arguments)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    drift_demo(".", **options)


if __name__ == "__main__":
    main()
