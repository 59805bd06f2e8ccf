"""The package stage for real: `python -m tasks.package` in a copy of the repository, on a champion
made here (a tiny untrained CNN exported to ONNX and promoted through the real gate), building
a real bento and validating it through a real `bentoml serve`.

Then the ways validation must fail, each with exit 1 and one line naming the check: the store
serving another model than the champion, a service that cannot start (a corrupt model file),
and a careless service that answers bad requests with 2xx and 5xx.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tasks.compression.export import export_onnx
from tasks.core.config import load_params, with_overrides
from tasks.core.io import write_json
from tasks.core.layout import Layout
from tasks.modeling.artifact import load_model, predict
from tasks.promote import promote
from tests.conftest import SHRUNK, copy_of_repository, merge, run
from tests.models import save_tiny_meta, save_tiny_model

pytestmark = pytest.mark.slow

CLASSES = ["a", "b", "c"]
GOLDEN, MAX_IMAGES = 12, 5  # three requests of several images: 5, 5 and 2
OVERRIDES = merge(SHRUNK, {"serve": {"golden_images": GOLDEN, "max_images": MAX_IMAGES}})
LENIENT_GATE = {  # the tiny model is untrained: only the registry's bookkeeping matters here
    "gate.min_accuracy": 0.0,
    "gate.min_invariance": 0.0,
    "gate.min_class_accuracy": 0.0,
    "gate.require_beats_baseline": False,
}
SUMMARY = re.compile(
    rf"package: bento (\S+) validated \({GOLDEN} golden images match, 5 bad requests 4xx, "
    r"p50 \d+ ms, p99 \d+ ms\)"
)
# A service as many people first write it with BentoML: right answers, careless input handling
# (no limit on the number of images, a corrupt file raises: 500).
CARELESS_SERVICE = """
import os
from pathlib import Path

import bentoml
import numpy as np
from PIL import Image

from tasks.compression.runtime import OnnxClassifier
from tasks.modeling.artifact import ModelCard

DEFAULT_TAG = "sixfold-classifier:latest"


@bentoml.service
class Classifier:
    model = bentoml.models.BentoModel(os.environ.get("SIXFOLD_MODEL_TAG", DEFAULT_TAG))

    def __init__(self) -> None:
        folder = Path(self.model.path)
        self.classifier = OnnxClassifier(folder / "model.onnx")
        self.pixels = ModelCard.load(folder / "model.json").preprocessing().pixels

    @bentoml.api
    def predict(self, images: list[Path]) -> dict:
        pixels = np.stack([self.pixels(Image.open(path)) for path in images])
        classes = self.classifier.classes
        return {"predictions": [
            {"label": classes[int(row.argmax())], "confidence": float(row.max()),
             "probabilities": dict(zip(classes, map(float, row)))}
            for row in self.classifier.probabilities(pixels)
        ]}
"""


def write_model(layout: Layout, seed: int) -> None:
    """A freshly initialised width-4 CNN for 1x16x16 images, and its card, into models/."""
    save_tiny_model(layout.models_dir, seed, CLASSES, image_size=16, fingerprint=f"params-{seed}")


def make_champion(layout: Layout) -> None:
    """Packed noise images labelled by the model itself, its ONNX file, the reports promote
    reads, and the real promote stage: the model becomes the registry's champion."""
    write_model(layout, seed=0)
    network, card = load_model(layout.models_dir)
    random = np.random.default_rng(0)
    layout.packed_dir.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 30), ("val", 15), ("test", 40)):
        images = random.integers(0, 256, size=(count, 1, 16, 16), dtype=np.uint8)
        labels = predict(network, card.preprocessing(), images).argmax(1)
        np.save(layout.packed_dir / f"{split}_x.npy", images)
        np.save(layout.packed_dir / f"{split}_y.npy", labels)
    save_tiny_meta(layout.packed_meta, card, {"train": 30, "val": 15, "test": 40})
    export_onnx(network, card, layout.onnx_dir / "model.onnx")
    write_json(layout.compress_report, {"served": "onnx_fp32"})
    write_json(
        layout.metrics_file,
        {"test": {"accuracy": 1.0}, "baseline": {"name": "logistic_regression", "accuracy": 0.0}},
    )
    params = with_overrides(load_params(layout.params_file), LENIENT_GATE)
    assert promote(params, layout).decision == "promoted"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_of_repository(tmp_path_factory.mktemp("package") / "repo", OVERRIDES)
    make_champion(Layout(repo))
    return repo


def package(repo: Path, *arguments: str) -> tuple[int, str, str]:
    """Run the stage with a home folder of its own (nothing may land in ~/bentoml)."""
    home = repo.parent / "home"
    home.mkdir(exist_ok=True)
    result = run(["python", "-m", "tasks.package", *arguments], repo, False, {"HOME": str(home)})
    return result.returncode, result.stdout, result.stderr


def report(repo: Path) -> dict:
    return json.loads((repo / "reports" / "package.json").read_text())


def processes_using(store: Path) -> list[int]:
    """Processes whose BENTOML_HOME is `store`: a server left running, or one of its workers."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("BENTOML_HOME") == str(store):
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stored_model(repo: Path) -> Path:
    champion = report(repo)["champion"]
    return Layout(repo).bentoml_home / "models" / "sixfold-classifier" / champion / "model.onnx"


def failure(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_the_champion_is_packaged_and_its_bento_validated(repo: Path) -> None:
    code, stdout, stderr = package(repo)
    assert code == 0, stderr[-3000:]
    match = SUMMARY.fullmatch(stdout.strip().splitlines()[-1])
    assert match, stdout
    found = report(repo)
    registry = json.loads((repo / "models" / "registry" / "registry.json").read_text())
    assert found["passed"] is True and found["bento"] == match.group(1)
    assert found["champion"] == registry["champion"] and found["served_format"] == "onnx_fp32"
    assert found["model"] == f"sixfold-classifier:{registry['champion']}"
    assert [check["name"] for check in found["checks"]][:3] == [
        "server starts",
        "golden images, one per request",
        "golden images, several per request",
    ]
    assert all(check["passed"] for check in found["checks"]) and len(found["checks"]) == 9
    assert found["checks"][2]["detail"].startswith(f"{GOLDEN} images in 3 requests")
    assert found["latency_ms"]["requests"] == GOLDEN
    assert 0 < found["latency_ms"]["p50"] <= found["latency_ms"]["p99"]

    store = Layout(repo).bentoml_home
    name, version = found["bento"].split(":")
    assert [p.name for p in (store / "bentos" / name).iterdir() if p.is_dir()] == [version]
    assert (store / "models" / "sixfold-classifier" / found["champion"] / "model.onnx").is_file()
    assert not (repo.parent / "home" / "bentoml").exists()
    assert processes_using(store) == []  # the server is stopped, workers included
    assert not list(store.rglob("predictions*.jsonl*"))  # golden requests are not traffic
    assert not (repo / "logs").exists()

    code, shown, _ = package(repo, "--show")
    assert code == 0 and shown.strip() == stdout.strip().splitlines()[-1]

    code, _, stderr = package(repo)  # a rerun: the same model, one new bento, none left over
    assert code == 0, stderr[-3000:]
    bento = report(repo)["bento"]
    assert bento != found["bento"] and report(repo)["model"] == found["model"]
    versions = [p.name for p in (store / "bentos" / name).iterdir() if p.is_dir()]
    assert versions == [bento.split(":")[1]]


def test_a_store_serving_another_model_fails_the_stage(repo: Path) -> None:
    target = stored_model(repo)
    original = target.read_bytes()
    other = Layout(repo.parent / "other")
    write_model(other, seed=1)
    network, card = load_model(other.models_dir)
    try:
        shutil.copyfile(export_onnx(network, card, other.onnx_dir / "model.onnx"), target)
        code, _, stderr = package(repo)
    finally:
        target.write_bytes(original)
    assert code == 1
    line = failure(stderr)
    assert line.startswith("error: package: bento ") and line.endswith(
        "reports/package.json lists every check"
    )
    assert "failed the check 'golden images, one per request': golden image " in line
    checks = {check["name"]: check for check in report(repo)["checks"]}
    assert report(repo)["passed"] is False
    assert not checks["golden images, several per request"]["passed"]
    assert checks["bad request: undecodable image"]["passed"]  # the rest was still checked
    assert processes_using(Layout(repo).bentoml_home) == []


def test_a_server_that_cannot_start_fails_the_stage_quickly(repo: Path) -> None:
    target = stored_model(repo)
    original = target.read_bytes()
    started = time.monotonic()
    try:
        target.write_bytes(b"not an ONNX model")
        code, _, stderr = package(repo)
    finally:
        target.write_bytes(original)
    assert code == 1 and time.monotonic() - started < 120  # given up, not waited out (180 s)
    line = failure(stderr)
    assert "failed the check 'server starts': the service failed to start 2 times" in line
    assert "INVALID_PROTOBUF" in line  # onnxruntime's own words: why
    found = report(repo)
    assert [check["name"] for check in found["checks"]] == ["server starts"]
    assert found["latency_ms"] == {"p50": None, "p99": None, "requests": 0}
    assert processes_using(Layout(repo).bentoml_home) == []


def test_a_careless_service_fails_on_the_bad_requests(repo: Path) -> None:
    service = repo / "deploy" / "service.py"
    original = service.read_text()
    try:
        service.write_text(CARELESS_SERVICE)
        code, _, stderr = package(repo)
    finally:
        service.write_text(original)
    assert code == 1
    line = failure(stderr)
    assert "failed the check 'bad request: undecodable image': HTTP 500, expected 4xx" in line
    checks = {check["name"]: check for check in report(repo)["checks"]}
    assert checks["golden images, one per request"]["passed"]  # right answers...
    assert checks["golden images, several per request"]["passed"]
    too_many = checks[f"bad request: too many images ({MAX_IMAGES + 1} > serve.max_images)"]
    assert not too_many["passed"] and too_many["detail"].startswith("HTTP 200, expected 4xx")
    assert processes_using(Layout(repo).bentoml_home) == []
