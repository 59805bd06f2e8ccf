"""The BentoML service behind a real `bentoml serve deploy.service:Classifier`, over HTTP.

A copy of the repository gets a tiny CNN (made here, exported to ONNX) as the registry's
champion, saved into its BentoML store by `save_champion`; one server per module answers the
tests of the HTTP contract: predictions (in order, equal to the ONNX model run offline),
explanations, every kind of bad request (a 4xx with one JSON line, never a 5xx), batching
across concurrent requests, /metrics, the prediction log and 500 generated malformed requests.
A second server, started by the last test, has the API key on, a latency budget of 1 ms (so a
burst gets 503) and a log that cannot be written.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest

from tasks.compression.runtime import OnnxClassifier
from tasks.core.layout import Layout
from tasks.packaging.server import Server, bentoml_serve_command, free_port, running
from tasks.registry.store import champion
from tasks.serving.logbook import EMBEDDING_FIELD
from tasks.serving.store import bentoml_environment
from tasks.serving.uploads import ImageRules, decode_image
from tests.code.test_serving import (
    BOUNDARY,
    CLASSES,
    make_champion,
    multipart,
    png_header,
    tiny_card,
)
from tests.conftest import copy_of_repository, write_params
from tests.images import noise, png_bytes

pytestmark = pytest.mark.slow

MAX_IMAGES = 4
MAX_PIXELS = 4096  # data.max_pixels: 64 x 64, so "too large" costs a few kilobytes
OVERRIDES = {
    "serve": {
        "max_images": MAX_IMAGES,
        "max_request_mb": 1,
        "max_batch_size": 8,
        "max_latency_ms": 10_000,  # the loaded test machine must not be told it is overloaded
        "max_concurrency": 64,
    },
    "data": {"max_pixels": MAX_PIXELS},
}
SERVICE = "deploy.service:Classifier"
KEY = "test-key"


# ------------------------------------------------------------------ the repository and server


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository copy whose registry's champion is a tiny CNN, saved into its BentoML store."""
    root = copy_of_repository(tmp_path_factory.mktemp("service") / "repo", OVERRIDES)
    make_champion(root, seed=0, export=True)
    environment = {**os.environ, **bentoml_environment(Layout(root))}
    code = "from tasks.core.layout import Layout\nfrom tasks.serving.store import save_champion\n"
    code += "print(save_champion(Layout.discover()))"
    subprocess.run([sys.executable, "-c", code], cwd=root, env=environment, check=True)
    return root


@contextmanager
def serving(root: Path, **variables: str) -> Iterator[Server]:
    environment = {**os.environ, **bentoml_environment(Layout(root)), **variables}
    for name in ("SIXFOLD_API_KEY", "SIXFOLD_LOG_DIR", "SIXFOLD_SERVE_BATCHING"):
        if name not in variables:
            environment.pop(name, None)
    port = free_port()
    with running(bentoml_serve_command(SERVICE, port), port, environment, root) as server:
        yield server


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    with serving(repo) as started:
        yield started


@pytest.fixture(scope="module")
def offline(repo: Path) -> tuple[ImageRules, OnnxClassifier]:
    """The decoder and the champion's ONNX model, run in this process: what the server must say."""
    preprocessing = tiny_card().preprocessing()
    rules = ImageRules(min_size=8, max_pixels=MAX_PIXELS, channels=1, pixels=preprocessing.pixels)
    return rules, OnnxClassifier(champion(Layout(repo).registry_dir).served_onnx)


def expected(images: list[bytes], offline: tuple, tmp_path: Path) -> np.ndarray:
    rules, model = offline
    pixels = []
    for index, data in enumerate(images):
        path = tmp_path / f"expected-{index}.png"
        path.write_bytes(data)
        pixels.append(decode_image(path, rules).pixels)
    return model.probabilities(np.stack(pixels))


def files(images: list[bytes], field: str = "images") -> list:
    return [(field, (f"image-{index}.png", data, "image/png")) for index, data in enumerate(images)]


def served_probabilities(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    rows = [p["probabilities"] for p in response.json()["predictions"]]
    return np.array([[row[name] for name in CLASSES] for row in rows])


def metric(server: Server, name: str, labels: str = "") -> float:
    """The sum of every sample of `name` (whose labels contain `labels`) at GET /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for tags, value in pattern.findall(text) if labels in (tags or ""))


def images_of(seeds: range, side: int = 16) -> list[bytes]:
    return [png_bytes(noise(seed, (side, side + seed % 5))) for seed in seeds]


# ------------------------------------------------------------------ the contract


def test_one_image_gets_the_offline_models_answer(
    server: Server, offline: tuple, tmp_path: Path
) -> None:
    image = images_of(range(1))
    response = httpx.post(f"{server.url}/predict", files=files(image), timeout=30)
    prediction = response.json()["predictions"][0]
    assert prediction["label"] in CLASSES and set(prediction["probabilities"]) == set(CLASSES)
    assert prediction["confidence"] == max(prediction["probabilities"].values())
    reference = expected(image, offline, tmp_path)
    np.testing.assert_allclose(served_probabilities(response), reference, rtol=1e-5, atol=1e-6)
    with bentoml.SyncHTTPClient(server.url) as sdk:  # no key on this server: none needed
        path = tmp_path / "one.png"
        path.write_bytes(image[0])
        answer = sdk.predict(images=[path])
    assert answer["predictions"][0]["label"] == prediction["label"]


def test_several_images_are_answered_in_order(
    server: Server, offline: tuple, tmp_path: Path
) -> None:
    images = images_of(range(10, 10 + MAX_IMAGES))
    reference = expected(images, offline, tmp_path)
    assert len({tuple(np.round(row, 6)) for row in reference}) == MAX_IMAGES  # distinguishable
    with httpx.Client(base_url=server.url, timeout=30) as client:
        forward = served_probabilities(client.post("/predict", files=files(images)))
        backward = served_probabilities(client.post("/predict", files=files(images[::-1])))
    np.testing.assert_allclose(forward, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backward, reference[::-1], rtol=1e-5, atol=1e-6)


def test_explain_answers_a_png(server: Server) -> None:
    response = httpx.post(f"{server.url}/explain", files=files(images_of(range(1)), "image"))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections made to it (SSRF canary)."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/image.png"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections += 1
            connection.close()


def raw(body: bytes, content_type: str | None) -> dict:
    """httpx arguments of a body sent as it is, with this content type (None: no header)."""
    return {"content": body, "headers": {"content-type": content_type} if content_type else {}}


def form(*parts: tuple[str, str | None, bytes]) -> dict:
    """httpx arguments of a multipart body of `parts` (field, filename or None for text, data)."""
    return raw(*reversed(multipart(parts)))


def bad_requests(canary: str) -> list[tuple[str, str, dict, int, str]]:
    """(name, route, httpx arguments, status, words of the error) of every kind of refusal."""
    good = png_bytes(noise(1, (16, 16)))
    url = canary.encode()
    opening = form(("images", "big.png", b""))  # a file part that goes on and on, chunked:
    start = opening["content"][: -len(f"\r\n--{BOUNDARY}--\r\n")]  # no Content-Length
    chunked = {**opening, "content": (b"\0" * 100_000 if index else start for index in range(12))}
    big, small = png_bytes(noise(3, (80, 80))), png_bytes(noise(2, (4, 20)))
    too_much = "over serve.max_request_mb"
    return [
        ("undecodable", "/predict", {"files": files([b"\0garbage" * 20])}, 400, "decode"),
        ("empty", "/predict", {"files": files([good, b""])}, 400, "image 2 of 2"),
        ("truncated", "/predict", {"files": files([good[:50]])}, 400, "truncated"),
        ("too small", "/predict", {"files": files([small])}, 400, "min_size"),
        ("too large", "/predict", {"files": files([big])}, 400, "max_pixels"),
        ("bomb", "/predict", {"files": files([png_header(40_000, 40_000)])}, 400, "to open"),
        ("too many", "/predict", {"files": files([good] * (MAX_IMAGES + 1))}, 413, "more than 4"),
        ("body too big", "/predict", {"files": files([b"\0" * 1_100_000])}, 413, too_much),
        ("streamed too big", "/predict", chunked, 413, too_much),
        ("url in file field", "/predict", form(("images", None, url)), 400, "holds text"),
        (
            "url after a file",
            "/predict",
            form(("images", "a", good), ("images", None, url)),
            400,
            "text",
        ),
        ("path in file field", "/explain", form(("image", None, b"/etc/passwd")), 400, "text"),
        ("url form-encoded", "/predict", {"data": {"images": canary}}, 415, "multipart"),
        ("json", "/predict", {"json": {"images": [canary]}}, 415, "multipart/form-data"),
        ("no content type", "/predict", raw(b"x", None), 415, "multipart/form-data"),
        ("pickle", "/predict", raw(b"x", "application/vnd.bentoml+pickle"), 415, "pickle"),
        ("wrong field", "/predict", {"files": files([good], "image")}, 422, "unexpected field"),
        ("no parts", "/predict", form(), 422, "no image file"),
        ("no boundary", "/predict", raw(b"x", "multipart/form-data"), 400, "boundary"),
        ("two to explain", "/explain", {"files": files([good, good], "image")}, 413, "more than 1"),
        ("explain undecodable", "/explain", {"files": files([b"nope"], "image")}, 400, "decode"),
    ]


def test_every_bad_request_gets_a_4xx_naming_the_problem(server: Server) -> None:
    canary = Listener()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name, route, arguments, status, words in bad_requests(canary.url):
            response = client.post(route, **arguments)
            assert response.status_code == status, (name, response.text)
            error = response.json()
            assert list(error) == ["error"] and words in error["error"], (name, error)
        wrong_method = client.get("/predict")
        assert wrong_method.status_code == 405 and wrong_method.json() == {
            "error": "Method Not Allowed"
        }
        assert client.get("/readyz").status_code == 200
    time.sleep(0.5)
    assert canary.connections == 0  # the URL in the file field was never fetched
    assert "Traceback" not in server.log.read_text(errors="replace")


def test_the_openapi_schema_documents_the_errors(server: Server) -> None:
    spec = httpx.get(f"{server.url}/docs.json", timeout=10).json()
    for route in ("/predict", "/explain"):
        responses = spec["paths"][route]["post"]["responses"]
        assert {"200", "400", "413", "415", "422", "503"} <= set(responses), route
        assert "401" not in responses  # no key on this server
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]


def test_concurrent_requests_are_batched_and_counted(server: Server) -> None:
    batches, requests = (
        metric(server, f"bentoml_service_adaptive_batch_size_{part}", 'method_name="classify"')
        for part in ("count", "sum")
    )
    labels = {
        name: metric(server, "sixfold_predictions_total", f'label="{name}"') for name in CLASSES
    }
    confidences = metric(server, "sixfold_prediction_confidence_count")
    images = images_of(range(100, 102))

    def post(index: int) -> list[str]:
        response = httpx.post(f"{server.url}/predict", files=files(images), timeout=60)
        assert response.status_code == 200, response.text
        return [p["label"] for p in response.json()["predictions"]]

    with ThreadPoolExecutor(16) as pool:
        answered = [label for labels_ in pool.map(post, range(48)) for label in labels_]

    new_batches = metric(server, "bentoml_service_adaptive_batch_size_count", "classify") - batches
    new_requests = metric(server, "bentoml_service_adaptive_batch_size_sum", "classify") - requests
    assert new_requests == 48 and new_batches < 48  # some batch held several requests
    for name in CLASSES:
        counted = metric(server, "sixfold_predictions_total", f'label="{name}"') - labels[name]
        assert counted == answered.count(name)
    assert metric(server, "sixfold_prediction_confidence_count") - confidences == len(answered)


def test_each_prediction_is_logged(
    server: Server, repo: Path, offline: tuple, tmp_path: Path
) -> None:
    image = images_of(range(200, 201), side=20)
    response = httpx.post(f"{server.url}/predict", files=files(image), timeout=30)
    label = response.json()["predictions"][0]["label"]
    logs = repo / "logs" / "predictions"
    deadline, found = time.monotonic() + 10, []
    while not found and time.monotonic() < deadline:
        time.sleep(0.1)
        lines = [line for f in logs.glob("*.jsonl") for line in f.read_text().splitlines()]
        records = [json.loads(line) for line in lines if line.endswith("}")]  # whole lines
        found = [r for r in records if r["width"] == 20 and r["height"] == 20]
    version = champion(Layout(repo).registry_dir).entry.id
    assert found and found[-1]["label"] == label and found[-1]["model_version"] == version
    assert set(found[-1]) == {
        "time", "model_version", "label", "confidence", "width", "height", "channels", "mean",
        "std", EMBEDDING_FIELD,
    }  # fmt: skip
    # the served ONNX file's embedding of the image (the width-4 CNN's 16 pooled features),
    # rounded to 4 significant digits
    rules, model = offline
    path = tmp_path / "logged.png"
    path.write_bytes(image[0])
    _, embedding = model.outputs(decode_image(path, rules).pixels[None])
    logged = np.array(found[-1][EMBEDDING_FIELD])
    assert logged.shape == (16,) == embedding[0].shape
    np.testing.assert_allclose(logged, embedding[0], rtol=5e-4, atol=1e-12)


# ------------------------------------------------------------------ 500 malformed requests


def fuzzed(generator: random.Random, good: bytes) -> tuple[str, str, dict]:
    """One malformed (or odd) request, of 14 kinds: (method, path, httpx arguments)."""
    pick = generator.choice
    route = pick(["/predict", "/explain"])
    field = "images" if route == "/predict" else "image"
    junk = generator.randbytes(generator.randrange(0, 3000))
    boundary = f"b{generator.randrange(10**9)}"
    mime = f"multipart/form-data; boundary={boundary}"

    def part(name: str, filename: str | None, data: bytes) -> bytes:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        return f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data

    def flipped() -> bytes:
        data = bytearray(good)
        for _ in range(generator.randrange(1, 20)):
            data[generator.randrange(8, len(data))] = generator.randrange(256)
        return bytes(data)

    kind = generator.randrange(14)
    if kind == 7:  # a method the routes do not take
        return pick(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]), route, {}
    if kind == 10:  # odd paths
        paths = ["/predict/", "//predict", "/predict%00", "/explain/../predict", "/x" * 50]
        return pick(["GET", "POST"]), pick(paths), {"content": junk}
    arguments = {
        0: lambda: raw(junk, pick(["application/octet-stream", "text/plain", "image/png", None])),
        1: lambda: {"files": files([good[: generator.randrange(len(good))]], field)},
        2: lambda: {"files": files([flipped()], field)},
        3: lambda: {"files": files([good], pick(["", "img", "images[]", "IMAGES", "\u00e9"]))},
        4: lambda: form((field, None, pick([b"http://127.0.0.1:1/", b"file:///etc/passwd", b""]))),
        5: lambda: raw(b"", pick([None, mime])),
        6: lambda: {
            "content": part(field, "a.png", good) + f"\r\n--{boundary}--\r\n".encode(),
            "headers": {"x-junk": "a" * generator.randrange(1000, 8000), "content-type": mime},
        },
        8: lambda: raw(b"".join(generator.sample([part(field, None, junk), junk, b"--"], 3)), mime),
        9: lambda: {"files": files([good] * generator.randrange(MAX_IMAGES + 1, 9), field)},
        11: lambda: raw(
            junk, "multipart/form-data; boundary=" + "x" * generator.randrange(60, 400)
        ),
        12: lambda: raw(
            pick([b"images=http%3A%2F%2F127.0.0.1%3A1%2F", b"a=b"]),
            "application/x-www-form-urlencoded",
        ),
        13: lambda: {"files": [(field, ("junk.bin", junk, pick(["image/png", "text/html"])))]},
    }[kind]()
    return "POST", route, arguments


def test_500_malformed_requests_get_no_5xx_and_the_server_stays_up(server: Server) -> None:
    generator = random.Random(20260611)
    good = png_bytes(noise(7, (24, 24)))
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for _ in range(500):
            method, path, arguments = fuzzed(generator, good)
            response = client.request(method, path, **arguments)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (method, path, response.text[:300])
            if response.status_code >= 400 and method != "HEAD":
                assert isinstance(response.json().get("error"), str), response.text[:300]
        assert client.get("/readyz").status_code == 200
    assert sum(count for status, count in statuses.items() if status >= 400) > 400, statuses
    assert "Traceback" not in server.log.read_text(errors="replace")


# ------------------------------------------------------------------ key on, 1 ms budget


def sibling(repo: Path, folder: Path, overrides: dict) -> Path:
    """A folder that serves `repo`'s code and model with other settings: its own params.yaml
    and its own BentoML home (two servers sharing one would share Prometheus's files)."""
    folder.mkdir()
    for name in ("deploy", "tasks"):
        (folder / name).symlink_to(repo / name)
    (folder / "params.yaml").write_text((repo / "params.yaml").read_text())
    write_params(folder, overrides)
    models = Layout(repo).bentoml_home / "models"
    shutil.copytree(models, Layout(folder).bentoml_home / "models", symlinks=True)
    return folder


def test_the_key_overload_and_a_log_that_cannot_be_written(repo: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the log folder's place is taken")
    hurried = sibling(repo, tmp_path / "hurried", {"serve": {"max_latency_ms": 1}})
    right = {"Authorization": f"Bearer {KEY}"}
    image = images_of(range(300, 302))
    with serving(hurried, SIXFOLD_API_KEY=KEY, SIXFOLD_LOG_DIR=str(blocker)) as keyed:
        with httpx.Client(base_url=keyed.url, timeout=30) as client:
            refused = client.post("/predict", files=files(image))
            assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
            wrong = {"Authorization": "Bearer wrong"}
            assert client.post("/predict", files=files(image), headers=wrong).status_code == 401
            for path in ("/livez", "/readyz", "/metrics"):
                assert client.get(path).status_code == 200, path
            assert client.get("/docs.json").status_code == 401
            assert client.post("/predict", files=files(image), headers=right).status_code == 200
            spec = client.get("/docs.json", headers=right).json()
            assert "401" in spec["paths"]["/predict"]["post"]["responses"]
        paths = [tmp_path / f"{index}.png" for index in range(len(image))]
        for path, data in zip(paths, image, strict=True):
            path.write_bytes(data)
        with bentoml.SyncHTTPClient(keyed.url, token=KEY) as sdk:
            answer = sdk.predict(images=paths)
        assert [p["label"] in CLASSES for p in answer["predictions"]] == [True, True]
        with pytest.raises(bentoml.exceptions.BentoMLException):
            bentoml.SyncHTTPClient(keyed.url)  # no key: not even its schema

        deadline = time.monotonic() + 10  # 2 requests x 2 images, none of them written
        while metric(keyed, "sixfold_prediction_log_dropped_total") < 4:
            assert time.monotonic() < deadline, "the dropped records were not counted"
            time.sleep(0.2)
        assert blocker.read_text() == "the log folder's place is taken"

        def post(index: int) -> httpx.Response:  # a burst no 1 ms budget can serve
            return httpx.post(f"{keyed.url}/predict", files=files(image), headers=right, timeout=60)

        # 32 at once (below serve.max_concurrency: no 429), long enough that the batcher's
        # latency estimate sees the queue: 48 requests from 16 threads were once all served
        with ThreadPoolExecutor(32) as pool:
            burst = list(pool.map(post, range(160)))
        overloaded = [r for r in burst if r.status_code == 503]
        assert {r.status_code for r in burst} <= {200, 503} and overloaded
        assert overloaded[0].json()["error"].startswith("overloaded: try again later")
        assert httpx.get(f"{keyed.url}/readyz").status_code == 200
        assert "Traceback" not in keyed.log.read_text(errors="replace")
