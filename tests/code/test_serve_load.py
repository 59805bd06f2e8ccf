"""benchmarks.serve_load without servers: reading hey's summary, the request body, the verdict,
and the FastAPI rival's contract (in process, on a tiny model exported here)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks.rivals.fastapi_rival import CARD_FILE, MODEL_ENV, ONNX_FILE, app
from benchmarks.serve_load import BOUNDARY, LoadResult, checks, multipart_body, parse_hey

# hey 0.1.4's summary (Debian bookworm), trimmed of the histogram, with a 503 and a failure
HEY_OUTPUT = """
Summary:
  Total:\t20.0312 secs
  Slowest:\t0.2031 secs
  Fastest:\t0.0041 secs
  Average:\t0.0398 secs
  Requests/sec:\t802.1086

Response time histogram:
  0.004 [1]\t|
  0.024 [4011]\t|■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■

Latency distribution:
  10% in 0.0201 secs
  25% in 0.0302 secs
  50% in 0.0375 secs
  75% in 0.0451 secs
  90% in 0.0550 secs
  95% in 0.0630 secs
  99% in 0.1012 secs

Details (average, fastest, slowest):
  DNS+dialup:\t0.0000 secs, 0.0041 secs, 0.2031 secs
  resp read:\t0.0001 secs, 0.0000 secs, 0.0011 secs

Status code distribution:
  [200]\t16000 responses
  [503]\t62 responses

Error distribution:
  [3]\tPost "http://127.0.0.1:3000/predict": EOF
"""


def test_hey_summary_is_read_with_errors_counted() -> None:
    result = parse_hey(HEY_OUTPUT)
    assert result.ok == 16000 and result.requests == 16065 and result.errors == 65
    assert result.statuses == {"200": 16000, "503": 62}
    assert result.failures == {'Post "http://127.0.0.1:3000/predict": EOF': 3}
    assert result.p50_ms == pytest.approx(37.5) and result.p99_ms == pytest.approx(101.2)
    # successes only: hey's own Requests/sec counts the 65 errors as served
    assert result.rps == pytest.approx(16000 / 20.0312)


def test_few_responses_fall_back_to_the_slowest_for_p99() -> None:
    # hey prints "0% in 0.0000 secs" instead of a 99% line below 100 responses
    short = HEY_OUTPUT.replace("99% in 0.1012", "0% in 0.0000")
    assert parse_hey(short).p99_ms == pytest.approx(203.1)


def test_an_output_without_a_total_names_the_problem() -> None:
    with pytest.raises(ValueError, match="Total"):
        parse_hey("connection refused")


def test_the_body_is_one_images_file_in_multipart() -> None:
    body = multipart_body(b"\x89PNG...")
    assert body.startswith(f"--{BOUNDARY}\r\n".encode())
    assert b'name="images"; filename="digit.png"' in body
    assert body.endswith(f"\r\n--{BOUNDARY}--\r\n".encode())
    assert b"\r\n\r\n\x89PNG...\r\n" in body


def load(rps: float, errors: int = 0, p99_ms: float = 80.0) -> LoadResult:
    seconds = 20.0
    ok = round(rps * seconds)
    return LoadResult(ok + errors, ok, seconds, 30.0, p99_ms, {"200": ok})


def verdicts(found: list) -> dict[str, bool]:
    return {check.figure: check.passed for check in found}


def test_every_target_is_met_when_batching_pays() -> None:
    found = checks(load(400), load(200), load(350))
    assert all(verdicts(found).values())
    assert next(c for c in found if c.figure == "ratio").value == pytest.approx(2.0)


def test_each_missed_target_is_its_own_failed_check() -> None:
    assert not verdicts(checks(load(400), load(300), load(100)))["ratio"]  # 1.33 < 1.5
    assert not verdicts(checks(load(400), load(200), load(401)))["batched_rps"]
    assert not verdicts(checks(load(400, p99_ms=151), load(200), load(100)))["p99_ms"]
    # one failed request anywhere fails the run, even the rival's
    assert not verdicts(checks(load(400), load(200), load(100, errors=1)))["errors"]


def test_an_unbatched_server_that_served_nothing_gives_an_infinite_ratio() -> None:
    ratio = next(c for c in checks(load(400), load(0), load(100)) if c.figure == "ratio")
    assert math.isinf(ratio.value)


@pytest.fixture(scope="module")
def rival_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised width-4 CNN on 8 px images, exported as the rival serves it."""
    from tasks.compression.export import export_onnx
    from tests.models import tiny_card, tiny_network

    folder = tmp_path_factory.mktemp("rival")
    card = tiny_card(["a", "b", "c"], image_size=8, fingerprint="tiny")
    export_onnx(tiny_network(card, seed=0), card, folder / ONNX_FILE)
    card.save(folder / CARD_FILE)
    return folder


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_rival_answers_the_services_contract(
    rival_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MODEL_ENV, str(rival_model))
    images = [png(seed) for seed in range(3)]
    with TestClient(app) as client:  # in process: the lifespan loads the model, no server
        files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        answer = client.post("/predict", files=files)
        refused = client.post("/predict", files=[("images", ("x.png", b"not a png", "image/png"))])
        model = app.state.model
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    expected = model.classifier.probabilities(
        np.stack([model.preprocessing.pixels(Image.open(io.BytesIO(data))) for data in images])
    )
    assert [p["label"] for p in predictions] == [["a", "b", "c"][i] for i in expected.argmax(1)]
    for prediction, row in zip(predictions, expected, strict=True):
        assert list(prediction["probabilities"].values()) == pytest.approx(row.tolist())
        assert prediction["confidence"] == pytest.approx(row.max())
    assert refused.status_code == 400 and "x.png" in refused.json()["detail"]
