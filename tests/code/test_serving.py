"""The serving library without a server: uploads, decoding, predictions, the prediction log, the
ASGI guard (in-process through httpx), and saving the champion into a BentoML store.

The service itself, behind a real `bentoml serve`, is tests/system/test_service.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from tasks.core.layout import Layout
from tasks.modeling.artifact import ModelCard, save_model
from tasks.registry.store import (
    Candidate,
    candidate_id,
    load_registry,
    now,
    record_decision,
    save_registry,
    store_files,
)
from tasks.serving.guard import RequestGuard, documented, error_body, upload_errors
from tasks.serving.logbook import (
    EMBEDDING_FIELD,
    PredictionLog,
    log_folder,
    prediction_record,
    significant,
)
from tasks.serving.predictions import joined_outputs, split_outputs, to_predictions
from tasks.serving.uploads import (
    ImageRules,
    RequestProblem,
    decode_image,
    decode_images,
    receive_files,
)
from tests import models
from tests.conftest import REPO_ROOT
from tests.images import noise, png_bytes

CLASSES = ["a", "b", "c"]
SIZE = 8
BOUNDARY = "sixfold-test-boundary"


# ------------------------------------------------------------------ helpers shared with the
# system test (tests/system/test_service.py)


def tiny_card() -> ModelCard:
    return models.tiny_card(CLASSES, SIZE, fingerprint="serving-test")


def make_champion(root: Path, seed: int, export: bool) -> str:
    """A freshly initialised width-4 CNN for 1x8x8 images made the registry's champion under
    `root` (models/registry); its id. `export`: a real ONNX file (seconds), else a stand-in."""

    from tasks.compression.export import export_onnx

    layout = Layout(root)
    card = tiny_card()
    network = models.tiny_network(card, seed)
    folder = root / f"made-{seed}"
    save_model(network, card, folder)
    onnx_dir = folder / "onnx"
    if export:
        export_onnx(network, card, onnx_dir / "model.onnx")
    else:
        onnx_dir.mkdir(exist_ok=True)
        (onnx_dir / "model.onnx").write_bytes(f"stand-in {seed}".encode())
    images = np.random.default_rng(seed).integers(0, 256, (12, 1, SIZE, SIZE), dtype=np.uint8)
    labels = np.arange(12) % len(CLASSES)
    identity = candidate_id(folder / "model.safetensors", folder / "model.json")
    files = store_files(layout.registry_dir, identity, folder, onnx_dir, (images, labels))
    registry = load_registry(layout.registry_dir)
    candidate = registry.entry(identity) or Candidate(
        id=identity,
        created=now(),
        files=files,
        served_format="onnx_fp32",
        served_file="onnx/model.onnx",
        accuracy=1.0,
        test_metrics={"accuracy": 1.0},
        baseline=None,
        data_version="serving-test",
        test_images=len(images),
        params_hash=f"serving-test-{seed}",
        parent=registry.champion,
        status="champion",
        reasons=[],
    )
    registry = record_decision(registry, candidate, True, ["made by the serving tests"], now())
    save_registry(registry, layout.registry_dir)
    return identity


def multipart(parts: Iterable[tuple[str, str | None, bytes]]) -> tuple[str, bytes]:
    """(content type, body) of multipart/form-data `parts`: (field, filename or None, data)."""
    body = b""
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return f"multipart/form-data; boundary={BOUNDARY}", body


def png_header(width: int, height: int) -> bytes:
    """A PNG declaring `width` x `height` with almost no pixel data: a decompression bomb's
    header (PIL reads the size from it; the pixels would never decode)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------ multipart uploads


async def _chunks(data: bytes, size: int, limit: int | None = None) -> AsyncIterator[bytes]:
    """`data` in chunks of `size`; fails the test if more than `limit` bytes are read."""
    for start in range(0, len(data), size):
        if limit is not None and start >= limit:
            raise AssertionError(f"the reader went on past byte {limit}")
        yield data[start : start + size]


def receive(parts: list, tmp_path: Path, max_files: int = 4, chunk: int = 7, **kwargs) -> list:
    content_type, body = multipart(parts)
    content_type = kwargs.pop("content_type", content_type)
    stream = _chunks(body, chunk, kwargs.pop("limit", None))
    return asyncio.run(receive_files(content_type, stream, "images", max_files, tmp_path))


def test_uploaded_files_are_written_in_order_whatever_the_chunking(tmp_path: Path) -> None:
    datas = [png_bytes(noise(seed)) for seed in range(3)]
    names = ["b.png", "../../etc/passwd", "a b\u00e9.png"]
    files = receive([("images", n, d) for n, d in zip(names, datas, strict=True)], tmp_path)
    assert [path.read_bytes() for path in files] == datas
    assert all(path.parent == tmp_path for path in files)  # a name cannot leave the folder
    assert [path.name for path in files] == ["0001-b.png", "0002-etc_passwd", "0003-a_b_.png"]


@pytest.mark.parametrize(
    ("parts", "status", "words"),
    [
        ([("images", None, b"http://169.254.169.254/")], 400, "holds text, not a file"),
        ([("image", "x.png", b"x")], 422, "unexpected field 'image'"),
        ([], 422, "no image file in field 'images'"),
    ],
)
def test_a_wrong_form_is_refused_with_its_reason(
    tmp_path: Path, parts: list, status: int, words: str
) -> None:
    with pytest.raises(RequestProblem) as refused:
        receive(parts, tmp_path)
    assert refused.value.status == status and words in str(refused.value)


def test_too_many_files_are_refused_before_the_rest_is_read(tmp_path: Path) -> None:
    parts = [("images", f"{index}.png", b"x" * 1000) for index in range(10)]
    # the fifth file's headers end near byte 5 x 1100: nothing much later may be read
    with pytest.raises(RequestProblem) as refused:
        receive(parts, tmp_path, max_files=4, chunk=100, limit=6000)
    assert refused.value.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert "more than 4 image(s)" in str(refused.value)


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 415),
        ("", 415),
        ("multipart/form-data", 400),  # no boundary
        ("multipart/form-data; boundary=other", 400),  # the body never starts
    ],
)
def test_a_body_that_is_not_the_expected_multipart_is_refused(
    tmp_path: Path, content_type: str, status: int
) -> None:
    with pytest.raises(RequestProblem) as refused:
        receive([("images", "a.png", b"x")], tmp_path, content_type=content_type)
    assert refused.value.status == status


# ------------------------------------------------------------------ decoding


@pytest.fixture(scope="module")
def rules() -> ImageRules:
    preprocessing = tiny_card().preprocessing()
    return ImageRules(min_size=8, max_pixels=10_000, channels=1, pixels=preprocessing.pixels)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_an_upload_becomes_the_shared_preprocessings_pixels(
    tmp_path: Path, rules: ImageRules
) -> None:
    colour = noise(3, (20, 30, 3))
    image = decode_image(write(tmp_path, "c.png", png_bytes(colour)), rules)
    expected = rules.pixels(Image.fromarray(colour).convert("L"))
    assert image.pixels.shape == (1, SIZE, SIZE) and image.pixels.dtype == np.uint8
    assert np.array_equal(image.pixels, expected)
    assert (image.width, image.height, image.channels) == (30, 20, 3)
    gray = np.asarray(Image.fromarray(colour).convert("L"), dtype=np.float64)
    assert image.mean == pytest.approx(gray.mean()) and image.std == pytest.approx(gray.std())


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "is empty"),
        (b"not an image at all", "is not an image sixfold can decode (UnidentifiedImageError"),
        (png_bytes(noise(1, (16, 16)))[:60], "is not an image sixfold can decode"),
        (png_bytes(noise(1, (4, 16))), "is 16x4: its smallest side is under data.min_size = 8"),
        (png_bytes(noise(1, (200, 100))), "= 20000 pixels, more than data.max_pixels = 10000"),
        (png_header(30_000, 30_000), "is too large to open"),
    ],
    ids=["empty", "garbage", "truncated", "too-small", "too-large", "bomb"],
)
def test_a_bad_image_is_refused_with_400_naming_it(
    tmp_path: Path, rules: ImageRules, data: bytes, words: str
) -> None:
    good = write(tmp_path, "0001-good.png", png_bytes(noise(2, (16, 16))))
    bad = write(tmp_path, "0002-bad.png", data)
    with pytest.raises(RequestProblem) as refused:
        decode_images([good, bad], rules)
    assert refused.value.status == HTTPStatus.BAD_REQUEST
    assert str(refused.value).startswith("image 2 of 2 (bad.png) ") and words in str(refused.value)


def test_predictions_keep_the_order_of_the_rows() -> None:
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]], np.float32)
    served = to_predictions(probabilities, CLASSES).predictions
    assert [p.label for p in served] == ["b", "a", "c"]
    assert served[1].confidence == pytest.approx(0.5)
    assert served[2].probabilities == pytest.approx({"a": 0.2, "b": 0.2, "c": 0.6})
    with pytest.raises(ValueError, match="shape"):
        to_predictions(probabilities[:, :2], CLASSES)


def test_the_inference_array_carries_the_embeddings_after_the_probabilities() -> None:
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    embeddings = np.arange(8, dtype=np.float32).reshape(2, 4)
    joined = joined_outputs(probabilities, embeddings)
    assert joined.shape == (2, 7)
    back, back_embeddings = split_outputs(joined, CLASSES)
    np.testing.assert_array_equal(back, probabilities)
    np.testing.assert_array_equal(back_embeddings, embeddings)
    # a model without the embedding output (exported before it): probabilities only
    alone = joined_outputs(probabilities, None)
    assert alone is probabilities and split_outputs(alone, CLASSES)[1] is None
    with pytest.raises(ValueError, match="shape"):
        split_outputs(probabilities[:, :2], CLASSES)


# ------------------------------------------------------------------ the prediction log


def test_a_record_carries_the_embedding_rounded_to_four_significant_digits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "one.png"
    path.write_bytes(png_bytes(noise(0, (16, 16))))
    rules = ImageRules(
        min_size=8, max_pixels=4096, channels=1, pixels=tiny_card().preprocessing().pixels
    )
    (image,) = decode_images([path], rules)
    (prediction,) = to_predictions(np.array([[0.2, 0.5, 0.3]], np.float32), CLASSES).predictions
    embedding = np.array([0.0, 1.234567, -98765.4, 3.0e-7, 12.5], np.float32)
    record = prediction_record(image, prediction, "v1", embedding)
    assert record[EMBEDDING_FIELD] == [0.0, 1.235, -98770.0, 3.0e-7, 12.5]
    assert EMBEDDING_FIELD not in prediction_record(image, prediction, "v1")  # an older model
    line = json.dumps(record[EMBEDDING_FIELD])
    assert len(line) < 45  # short decimals, not float32 noise (1.2345670461654663)
    values = np.random.default_rng(0).gamma(1.0, 2.0, 128)
    rounded = np.array(significant(values))
    assert np.all(np.abs(rounded - values) <= 5e-4 * np.abs(values))


def records(count: int, start: int = 0) -> list[dict]:
    return [{"index": index, "padding": "x" * 40} for index in range(start, start + count)]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_log_rotates_and_keeps_its_backups(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "logs", "predictions-1", max_bytes=300, backups=2)
    for start in range(0, 30, 3):
        log.append(records(3, start))
        log.flush()
    log.close()
    path = tmp_path / "logs" / "predictions-1.jsonl"
    files = sorted(path.parent.iterdir())
    assert [f.name for f in files] == [
        "predictions-1.jsonl",
        "predictions-1.jsonl.1",
        "predictions-1.jsonl.2",
    ]
    assert all(f.stat().st_size <= 300 for f in files)
    kept = [r["index"] for f in reversed(files) for r in read_lines(f)]
    assert kept == list(range(30 - len(kept), 30)) and log.dropped == 0  # the newest, in order


def test_a_log_that_cannot_be_written_drops_and_counts_its_records(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the log folder's place is taken")
    counted: list[int] = []
    log = PredictionLog(blocker / "logs", "p", 10_000, 1, on_drop=counted.append)
    log.append(records(5))
    log.flush()
    assert log.dropped == 5 and sum(counted) == 5
    log.close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_drops_records_and_the_log_recovers(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "p.jsonl"
    path.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    log = PredictionLog(folder, "p", 10_000, 1)
    log.append(records(3))
    log.flush()
    assert log.dropped == 3
    path.unlink()  # space again
    log.append(records(2, 3))
    log.flush()
    log.close()
    assert [r["index"] for r in read_lines(path)] == [3, 4] and log.dropped == 3


def test_a_full_queue_drops_instead_of_waiting(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, "p", 10_000, 1, queue_records=1)
    log.append(records(500))  # the writer cannot keep up with one slot
    log.flush()
    log.close()
    written = len(read_lines(tmp_path / "p.jsonl"))
    assert log.dropped > 0 and written + log.dropped == 500


def test_the_log_folder_is_relative_to_the_root_unless_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIXFOLD_LOG_DIR", raising=False)
    assert log_folder(tmp_path, "logs/predictions") == tmp_path / "logs/predictions"
    assert log_folder(tmp_path, "/var/log/x") == Path("/var/log/x")
    monkeypatch.setenv("SIXFOLD_LOG_DIR", "elsewhere")
    assert log_folder(tmp_path, "logs/predictions") == tmp_path / "elsewhere"


# ------------------------------------------------------------------ the ASGI guard


async def _echo(request: Request) -> JSONResponse:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return JSONResponse({"received": size})


async def _bentoml_style(request: Request) -> JSONResponse:
    return JSONResponse([{"error": "BentoML's list"}], status_code=400)


async def _docs(request: Request) -> JSONResponse:
    ok = {"200": {"description": "ok"}, "400": {"description": "generic"}}
    return JSONResponse({"paths": {"/predict": {"post": {"responses": ok}}, "/livez": {"get": {}}}})


INNER = Starlette(
    routes=[
        Route("/predict", _echo, methods=["POST"]),
        Route("/livez", lambda request: PlainTextResponse("ok")),
        Route("/listed", _bentoml_style),
        Route("/docs.json", _docs),
    ]
)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    app: RequestGuard,
    method: str,
    path: str,
    chunks: Iterable[bytes] = (),
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request through the ASGI `app`, its body sent as `chunks` (one message each), as
    uvicorn would; a Content-Length only when `headers` gives one."""
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3000),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body)


def guard(key: str | None = None, limit: int = 1000) -> RequestGuard:
    errors = {"/predict": upload_errors("images", 4, 0.001)}
    return RequestGuard(INNER, max_body_bytes=limit, api_key=key, errors=errors)


def test_the_key_is_required_except_on_open_paths() -> None:
    keyed = guard(key="s3cret")
    refused = call(keyed, "POST", "/predict", [b"x"])
    assert refused.status == 401 and "Bearer" in refused.json()["error"]
    assert refused.headers["www-authenticate"].startswith("Bearer")
    wrong = call(keyed, "POST", "/predict", [b"x"], {"Authorization": "Bearer s3cre"})
    assert wrong.status == 401
    right = call(keyed, "POST", "/predict", [b"x"], {"Authorization": "bearer s3cret"})
    assert right.json() == {"received": 1}
    assert call(keyed, "GET", "/livez").body == b"ok"
    assert call(guard(key=None), "POST", "/predict", [b"x"]).status == 200


def test_a_body_over_the_limit_gets_413_declared_or_streamed() -> None:
    limited = guard(limit=1000)
    declared = call(limited, "POST", "/predict", [b"x" * 1001], {"Content-Length": "1001"})
    assert declared.status == 413 and "1001 bytes" in declared.json()["error"]
    fits = call(limited, "POST", "/predict", [b"x" * 1000], {"Content-Length": "1000"})
    assert fits.json() == {"received": 1000}
    streamed = call(limited, "POST", "/predict", [b"x" * 400] * 3)  # no Content-Length
    assert streamed.status == 413 and "more than 1000 bytes" in streamed.json()["error"]
    assert call(limited, "POST", "/predict", [b"x" * 400] * 2).json() == {"received": 800}
    bad = call(limited, "POST", "/predict", [b"x"], {"Content-Length": "1e3"})
    assert bad.status == 400 and "Content-Length" in bad.json()["error"]


def test_every_error_leaves_as_one_json_object() -> None:
    shaped = guard()
    listed = call(shaped, "GET", "/listed")
    assert listed.json() == {"error": "BentoML's list"} and listed.status == 400
    assert listed.headers["content-length"] == str(len(listed.body))
    assert call(shaped, "GET", "/nowhere").json() == {"error": "Not Found"}
    assert call(shaped, "GET", "/predict").json() == {"error": "Method Not Allowed"}
    assert json.loads(error_body(500, b"")) == {"error": "Internal Server Error"}
    validation = {"error": "1 validation error", "detail": [{"loc": ["images"], "msg": "bad"}]}
    assert json.loads(error_body(400, json.dumps(validation).encode())) == {
        "error": "1 validation error; images: bad"
    }


def test_the_openapi_document_lists_the_real_errors() -> None:
    spec = call(guard(key="k"), "GET", "/docs.json", headers={"Authorization": "Bearer k"}).json()
    responses = spec["paths"]["/predict"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "413", "415", "422", "429", "503"}
    assert responses["413"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    assert spec["security"] == [{"bearer": []}] and spec["paths"]["/livez"]["get"]["security"] == []
    unkeyed = documented({"paths": {"/predict": {"post": {}}}}, {"/predict": {401: "k"}}, False)
    assert unkeyed["paths"]["/predict"]["post"]["responses"] == {} and "security" not in unkeyed


# ------------------------------------------------------------------ the BentoML model store

# Run in a fresh process: BentoML fixes its store once per process (BENTOML_HOME).
SAVE_SEQUENCE = """
import json, sys
from pathlib import Path
from tasks.core.layout import Layout
from tasks.serving.store import DEFAULT_TAG, save_champion, saved_model
from tests.code.test_serving import make_champion

root = Path(sys.argv[1])
def saved():
    tag = save_champion(Layout(root))
    model = saved_model(DEFAULT_TAG)
    files = sorted(path.name for path in Path(model.path).iterdir())
    return {"tag": tag, "latest": str(model.tag), "metadata": model.info.metadata,
            "files": files, "stamp": Path(model.path).stat().st_mtime_ns}
steps = {"first": make_champion(root, 0, export=False)}
steps["once"], steps["twice"] = saved(), saved()
steps["second"] = make_champion(root, 1, export=False)
steps["after_second"] = saved()
make_champion(root, 0, export=False)  # the first is promoted back
steps["rollback"] = saved()
print(json.dumps(steps))
"""


def run_saving(root: Path, script: str, home: Path | None = None) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "BENTOML_HOME": str(home or Layout(root).bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [sys.executable, "-c", script, str(root)]
    return subprocess.run(command, env=environment, capture_output=True, text=True, check=False)


def test_the_champion_is_saved_once_and_a_rollback_makes_it_latest_again(tmp_path: Path) -> None:
    result = run_saving(tmp_path, SAVE_SEQUENCE)
    assert result.returncode == 0, result.stderr[-2000:]
    steps = json.loads(result.stdout.strip().splitlines()[-1])
    first, once = steps["first"], steps["once"]
    assert once["tag"] == once["latest"] == f"sixfold-classifier:{first}"
    assert once["metadata"] == {"champion": first, "served_format": "onnx_fp32", "classes": CLASSES}
    assert once["files"] == ["model.json", "model.onnx", "model.safetensors", "model.yaml"]
    assert steps["twice"] == once  # a no-op: not even written again
    assert steps["after_second"]["latest"] == f"sixfold-classifier:{steps['second']}"
    assert steps["rollback"]["latest"] == f"sixfold-classifier:{first}"


def test_saving_into_another_store_than_the_projects_is_refused(tmp_path: Path) -> None:
    make_champion(tmp_path, seed=0, export=False)
    script = (
        "import sys\nfrom tasks.core.layout import Layout\n"
        "from tasks.serving.store import save_champion\nsave_champion(Layout(sys.argv[1]))\n"
    )
    result = run_saving(tmp_path, script, home=tmp_path / "elsewhere")
    assert result.returncode != 0 and "not the project's store" in result.stderr
    assert not (tmp_path / "elsewhere" / "models" / "sixfold-classifier").exists()


def test_a_png_header_helper_declares_its_size() -> None:
    # the bomb case above relies on PIL reading the size from these bytes alone
    with Image.open(io.BytesIO(png_header(123, 45))) as image:
        assert image.size == (123, 45)
