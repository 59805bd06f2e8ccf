"""The drift monitor end to end against the reference of the trained repository (the champion's
test images).

Clean uploads are the validation split's raw files: held out from training and from the
reference, so "no drift on clean traffic" is a real control (the test split itself would be
compared with itself and could not fail); drifted ones are the same files rotated, inverted or
made noisy.

The first test writes the prediction log as the service writes it (each upload decoded by the
service's own decoder, `tasks.serving.uploads.decode_images`, classified and embedded by the
champion's served ONNX file, int8) and checks it with the Prefect flow (`python -m
flows.monitor`). The second is real traffic: the packaged champion served by `bentoml serve`,
clean then drifted requests over HTTP, and the real check (the `drift-monitor` flow with
`on_drift` naming a deployment on the tests' Prefect server) after each batch: no continual
learning on clean traffic, and on drift only at the `monitor.consecutive`-th verdict in a row.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from tasks.compression.report import INT8_FILE
from tasks.compression.runtime import OnnxClassifier
from tasks.core.config import load_params
from tasks.core.layout import Layout
from tasks.modeling.artifact import load_model
from tasks.registry.store import champion
from tests.conftest import run


def _rotated(image: Image.Image, generator: np.random.Generator) -> Image.Image:
    return image.rotate(float(generator.choice([-1, 1]) * generator.uniform(35, 55)))


def _inverted(image: Image.Image, generator: np.random.Generator) -> Image.Image:
    return Image.fromarray(255 - np.asarray(image))


def _noisy(image: Image.Image, generator: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, np.float64) + generator.normal(0, 60, np.asarray(image).shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _thicker(image: Image.Image, generator: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.MaxFilter(3))


DRIFTS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "rotated": _rotated,
    "inverted": _inverted,
    "noisy": _noisy,
    "thicker": _thicker,
}


def split_files(repo: Path, split: str) -> list[Path]:
    """The raw files of one split (data/splits/split.csv), in its order."""
    layout = Layout(repo)
    rows = pd.read_csv(layout.split_file, dtype=str, keep_default_na=False)
    return [layout.raw_files / path for path in rows.loc[rows["split"] == split, "path"]]


def drifted_files(sources: list[Path], folder: Path, kinds: list[str], seed: int) -> list[Path]:
    """A copy of each source, changed by one of `kinds` in turn (seeded), as PNG files."""
    generator = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, source in enumerate(sources):
        with Image.open(source) as image:
            changed = DRIFTS[kinds[index % len(kinds)]](image.convert("L"), generator)
        path = folder / f"{index:05d}.png"
        changed.save(path)
        written.append(path)
    return written


def log_predictions(repo: Path, uploads: list[Path], log_file: Path) -> None:
    """Append the service's prediction record for each upload to `log_file`: the champion's
    served ONNX file gives the probabilities and the embedding (`OnnxClassifier.outputs`, what
    the service's inference process runs) and `prediction_record` writes the line."""
    from tasks.serving.logbook import prediction_record
    from tasks.serving.predictions import to_predictions
    from tasks.serving.uploads import ImageRules, decode_images

    layout = Layout(repo)
    params = load_params(layout.params_file)
    files = champion(layout.registry_dir)
    _, card = load_model(files.folder)
    rules = ImageRules(
        params.data.min_size, params.data.max_pixels, card.channels, card.preprocessing().pixels
    )
    decoded = decode_images(uploads, rules)
    served = OnnxClassifier(files.served_onnx)
    probabilities, embeddings = served.outputs(np.stack([image.pixels for image in decoded]))
    assert embeddings is not None, f"{files.served_onnx} has no embedding output"
    predictions = to_predictions(probabilities, card.classes).predictions
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as handle:
        for image, prediction, embedding in zip(decoded, predictions, embeddings, strict=True):
            record = prediction_record(image, prediction, files.entry.id, embedding)
            handle.write(json.dumps(record) + "\n")


def copy_for_monitoring(trained: Path, destination: Path) -> Path:
    """The trained repository without what the monitor never reads (git, DVC's cache, the
    BentoML store), so this test writes its log and reports into its own copy."""
    ignored = shutil.ignore_patterns(".git", ".dvc", "bentoml", "logs")
    return Path(shutil.copytree(trained, destination, ignore=ignored, symlinks=True))


def monitor(repo: Path, api_url: str) -> subprocess.CompletedProcess[str]:
    """`python -m flows.monitor` recorded in the tests' Prefect server (`prefect_server`)."""
    environment = {"PREFECT_API_URL": api_url}
    return run(["python", "-m", "flows.monitor"], repo, check=False, env=environment)


def latest_report(repo: Path) -> dict:
    reports = sorted((repo / "reports" / "monitor").glob("*Z.json"))
    return json.loads(reports[-1].read_text())


@pytest.mark.slow
def test_the_flow_finds_drift_in_drifted_uploads_and_none_in_clean_ones(
    trained_repo: Path, prefect_server: str, tmp_path: Path
) -> None:
    repo = copy_for_monitoring(trained_repo, tmp_path / "repo")
    log_file = repo / "logs" / "predictions" / "predictions-1.jsonl"
    clean = split_files(repo, "val")
    # the served embeddings are int8's, the reference's too (the same file): no false drift
    assert champion(Layout(repo).registry_dir).served_onnx.name == INT8_FILE

    log_predictions(repo, clean[:20], log_file)  # too few to tell: no verdict, state unmoved
    result = monitor(repo, prefect_server)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    first = latest_report(repo)
    assert first["drift"] is None and first["status"] == "no verdict", first
    assert not (repo / "reports" / "monitor" / "state.json").exists()

    log_predictions(repo, clean[20:], log_file)
    result = monitor(repo, prefect_server)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    report = latest_report(repo)
    assert report["records"] == len(clean)  # the first 20 were judged with the rest
    assert report["drift"] is False, json.dumps(report["tests"], indent=1)
    assert "drift-monitor: no drift" in log
    assert report["model"]["records"] == len(clean)
    ran = {test["name"] for test in report["tests"] if test["drift"] is not None}
    assert {"ks:mean", "ks:std", "chi2:predicted_label", "mmd:embedding"} <= ran
    assert all(test["adjusted_p"] >= test["p_value"] for test in report["tests"])
    assert report["reference"]["test_images"] == len(split_files(repo, "test"))
    assert report["reference"]["statistics_images"] == report["reference"]["test_images"]
    assert report["continual"]["drift_in_a_row"] == 0 and report["warnings"] == []
    assert (repo / "reports" / "monitor" / report["plot"]).stat().st_size > 10_000

    uploads = drifted_files(clean, tmp_path / "drifted", ["rotated", "noisy"], seed=0)
    log_predictions(repo, uploads, log_file)
    result = monitor(repo, prefect_server)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    report = latest_report(repo)
    assert report["records"] == len(uploads)  # only what came after the last verdict
    assert report["drift"] is True and "drift-monitor: drift in" in log
    drifted = {test["name"] for test in report["tests"] if test["drift"]}
    assert "mmd:embedding" in drifted and "ks:std" in drifted, report["tests"]
    state = json.loads((repo / "reports" / "monitor" / "state.json").read_text())
    assert state["until"] == report["until"] and state["drift_in_a_row"] == 1
    assert "drift 1 of 2 in a row: continual learning not started yet" in log

    uploads = drifted_files(clean, tmp_path / "inverted", ["inverted"], seed=0)
    log_predictions(repo, uploads, log_file)
    result = monitor(repo, prefect_server)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = latest_report(repo)
    (mmd,) = [test for test in report["tests"] if test["name"] == "mmd:embedding"]
    assert report["drift"] is True and mmd["drift"] is True, mmd
    assert mmd["samples"]["served"] == len(uploads)
    assert report["continual"] == {
        "drift_in_a_row": 2,
        "needed": 2,
        "start": True,
        "message": "drift 2 of 2 in a row: continual learning is due",
    }


# Registers a stand-in `continual-learning` deployment on the tests' Prefect server (the real
# flow would fine-tune: not this test's subject), runs the real drift_monitor flow with on_drift
# naming it, and prints the verdict and how many runs of that deployment were ever started.
HOOK_SCRIPT = """\
import asyncio, json
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from flows.monitor import drift_monitor

@flow(name="continual-learning")
def continual_learning() -> None: ...

async def register():
    async with get_client() as client:
        flow_id = await client.create_flow(continual_learning)
        await client.create_deployment(flow_id=flow_id, name="on-drift-{name}")

async def started():
    named = DeploymentFilter(name=DeploymentFilterName(any_=["on-drift-{name}"]))
    async with get_client() as client:
        return len(await client.read_flow_runs(deployment_filter=named, limit=50))

asyncio.run(register())
verdict = drift_monitor(".", on_drift="continual-learning/on-drift-{name}")
print("result:", json.dumps({{"verdict": verdict, "started": asyncio.run(started())}}))
"""


def served_records(repo: Path) -> int:
    from tasks.monitoring.served import read_log

    return len(read_log(repo / "logs" / "predictions", None).records)


def send(url: str, repo: Path, files: list[Path]) -> None:
    """Post `files` to the server as clients would, then wait until the service's log writer
    has written a record of each (it writes from a background thread)."""
    from flows.drift_demo import served_accuracy

    expected = served_records(repo) + len(files)
    served_accuracy(url, [(path, "") for path in files])  # the labels do not matter here
    deadline = time.monotonic() + 60
    while served_records(repo) < expected:
        assert time.monotonic() < deadline, f"{served_records(repo)} of {expected} logged"
        time.sleep(0.5)


def check(repo: Path, environment: dict[str, str]) -> dict:
    result = run(["python", "hook.py"], repo, env=environment)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("result: ")]
    return json.loads(line.removeprefix("result: "))


@pytest.mark.slow
def test_served_traffic_starts_continual_learning_only_after_consecutive_drift_verdicts(
    trained_repo: Path, prefect_server: str, tmp_path: Path
) -> None:
    from flows.drift_demo import serving

    ignored = shutil.ignore_patterns(".git", ".dvc", "logs", ".venv")
    repo = Path(shutil.copytree(trained_repo, tmp_path / "repo", ignore=ignored, symlinks=True))
    (repo / "hook.py").write_text(HOOK_SCRIPT.format(name=tmp_path.name))
    environment = {"PREFECT_API_URL": prefect_server}
    needed = load_params(Layout(repo).params_file).monitor.consecutive
    assert needed == 2  # the shipped setting: one drift verdict alone starts nothing
    # split.csv lists the images class by class: shuffled, each batch has every class
    ordered = split_files(repo, "val")
    clean = [ordered[i] for i in np.random.default_rng(0).permutation(len(ordered))]
    chunks = [clean[start : start + 90] for start in range(0, 270, 90)]
    inverted = drifted_files(clean, tmp_path / "inverted", ["inverted"], seed=0)
    with serving(repo, champion(Layout(repo).registry_dir).entry.id) as url:
        for chunk in chunks:  # clean held-out traffic, a real check after each batch
            send(url, repo, chunk)
            result = check(repo, environment)
            assert result == {"verdict": False, "started": 0}, latest_report(repo)["reason"]
        for round_ in range(1, needed + 1):  # drifted traffic: inverted uploads
            send(url, repo, inverted[(round_ - 1) * 90 : round_ * 90])
            result = check(repo, environment)
            report = latest_report(repo)
            assert result["verdict"] is True, report["reason"]
            assert report["continual"]["drift_in_a_row"] == round_
            # continual learning starts at the `needed`-th drift verdict in a row, not before
            assert result["started"] == (1 if round_ == needed else 0), report["continual"]
    assert report["model"]["records"] == 90 and report["warnings"] == []
