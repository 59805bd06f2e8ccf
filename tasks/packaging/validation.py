"""Infra validation: the checks a served bento must pass before the package stage accepts it.

Each check is real HTTP against the running server (:mod:`tasks.packaging.server`) and gives a
:class:`Check`: its name, whether it passed, and a one-line detail that says what came back.

- the golden images one per request: every served label equals the offline model's, and every
  probability is within :data:`PROBABILITY_ATOL` of it (the latency of these requests is what
  the report records);
- the golden images several per request (`serve.max_images` at most): the same answers, in the
  order the files were sent;
- bad requests (undecodable bytes, one file too many, a string where a file belongs, a JSON
  body, a missing field) each get a 4xx answer with a JSON `{"error": ...}` naming the problem:
  a 2xx means the service accepted garbage, a 5xx that it crashed on it;
- the server still answers its readiness probe after all that.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import numpy as np

from tasks.packaging.golden import Golden

# Served and offline run the same ONNX file with the same onnxruntime settings, so they agree
# to float32 rounding (measured: 0 on the digits int8 model); 1e-5 is far below any real change
# (the int8 and fp32 files of the digits CNN differ by 1e-3 and more).
PROBABILITY_ATOL = 1e-5
REQUEST_TIMEOUT_S = 60.0
FIELD = "images"  # the multipart field of POST /predict


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Latency:
    """Milliseconds of the single-image golden requests (client side: the whole round trip)."""

    p50: float
    p99: float
    requests: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        milliseconds = np.asarray(seconds, dtype=float) * 1000.0
        if milliseconds.size == 0:
            return cls(0.0, 0.0, 0)
        p50, p99 = np.percentile(milliseconds, [50, 99])
        return cls(round(float(p50), 2), round(float(p99), 2), int(milliseconds.size))


@dataclass(frozen=True)
class BadRequest:
    """A request the service must refuse with a 4xx: its name and how to send it."""

    name: str
    send: Callable[[httpx.Client, str], httpx.Response]


def image_fields(files: Sequence[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart `images` fields, one PNG file each, named in sending order."""
    return [(FIELD, (f"golden-{i}.png", data, "image/png")) for i, data in enumerate(files)]


def predict(client: httpx.Client, url: str, files: Sequence[bytes]) -> httpx.Response:
    return client.post(f"{url}/predict", files=image_fields(files))


def golden_answer(
    client: httpx.Client, url: str, golden: Golden, positions: Sequence[int]
) -> tuple[list[str], float]:
    """Send the golden images at `positions` in one request; what is wrong with the answer."""
    try:
        response = predict(client, url, [golden.files[p] for p in positions])
    except httpx.TransportError as error:
        return [f"golden image(s) {list(positions)}: no answer ({type(error).__name__})"], 0.0
    return answer_problems(response, golden, positions)


def answer_problems(
    response: httpx.Response, golden: Golden, positions: Sequence[int]
) -> tuple[list[str], float]:
    """What is wrong with a /predict answer for the golden images at `positions` (empty when
    nothing), and the largest probability difference seen."""
    where = f"request of golden image(s) {list(positions)}"
    if response.status_code != 200:
        return [f"{where}: HTTP {response.status_code} {_body(response)}"], 0.0
    try:
        predictions = response.json()["predictions"]
    except (ValueError, KeyError, TypeError):
        return [f"{where}: no JSON 'predictions' in the answer: {_body(response)}"], 0.0
    if not isinstance(predictions, list) or len(predictions) != len(positions):
        found = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
        return [f"{where}: {found} predictions for {len(positions)} images"], 0.0
    problems, largest = [], 0.0
    for position, prediction in zip(positions, predictions, strict=True):
        expected = golden.probabilities[position]
        label = golden.classes[int(expected.argmax())]
        try:
            served = prediction["probabilities"]
            difference = max(
                abs(float(served[c]) - float(p))
                for c, p in zip(golden.classes, expected, strict=True)
            )
            served_label = prediction["label"]
        except (KeyError, TypeError, ValueError):
            problems.append(
                f"golden image {position}: malformed prediction {str(prediction)[:120]}"
            )
            continue
        if set(served) != set(golden.classes):
            problems.append(
                f"golden image {position}: classes {sorted(served)} != {golden.classes}"
            )
        largest = max(largest, difference)
        if served_label != label:
            problems.append(
                f"golden image {position}: served label {served_label}, offline {label}"
            )
        elif difference > PROBABILITY_ATOL:
            problems.append(
                f"golden image {position}: probabilities differ by {difference:.2g} "
                f"(> {PROBABILITY_ATOL:g})"
            )
    return problems, largest


def golden_check(
    name: str, outcomes: Sequence[tuple[list[str], float]], images: int, requests: int
) -> Check:
    problems = [problem for found, _ in outcomes for problem in found]
    largest = max((difference for _, difference in outcomes), default=0.0)
    if problems:
        more = f"; {len(problems)} problems in {images} images" if len(problems) > 1 else ""
        return Check(name, False, f"{problems[0]}{more}")
    return Check(
        name,
        True,
        f"{images} images in {requests} requests: labels equal the offline model's, "
        f"probabilities differ by {largest:.2g} at most (<= {PROBABILITY_ATOL:g})",
    )


def check_single(client: httpx.Client, url: str, golden: Golden) -> tuple[Check, Latency]:
    """Each golden image alone; their round-trip times are the recorded latency."""
    golden_answer(client, url, golden, [0])  # warm-up: the first request pays lazy start-ups
    outcomes, seconds = [], []
    for position in range(len(golden.files)):
        started = time.perf_counter()
        outcomes.append(golden_answer(client, url, golden, [position]))
        seconds.append(time.perf_counter() - started)
    check = golden_check(
        "golden images, one per request", outcomes, len(golden.files), len(outcomes)
    )
    return check, Latency.of(seconds)


def check_several(client: httpx.Client, url: str, golden: Golden, max_images: int) -> Check:
    """The golden images `max_images` per request (the last request takes the rest)."""
    name = "golden images, several per request"
    if max_images < 2:
        return Check(name, True, "skipped: serve.max_images is 1 (one image per request)")
    outcomes = []
    for start in range(0, len(golden.files), max_images):
        positions = list(range(start, min(start + max_images, len(golden.files))))
        outcomes.append(golden_answer(client, url, golden, positions))
    return golden_check(name, outcomes, len(golden.files), len(outcomes))


def bad_requests(valid_image: bytes, max_images: int) -> list[BadRequest]:
    """The requests every sixfold service must refuse with a 4xx (one per kind of mistake)."""
    too_many = [valid_image] * (max_images + 1)
    return [
        BadRequest(
            "undecodable image",
            lambda c, url: c.post(
                f"{url}/predict", files=[(FIELD, ("broken.png", b"not an image", "image/png"))]
            ),
        ),
        BadRequest(
            f"too many images ({max_images + 1} > serve.max_images)",
            lambda c, url: predict(c, url, too_many),
        ),
        BadRequest(  # BentoML fetches a string in a file field as a URL: a request forgery risk
            "a string where a file belongs",
            lambda c, url: c.post(
                f"{url}/predict", files=[(FIELD, (None, "http://127.0.0.1:9/golden.png"))]
            ),
        ),
        BadRequest(
            "wrong content type (JSON)",
            lambda c, url: c.post(f"{url}/predict", json={FIELD: ["golden-0.png"]}),
        ),
        BadRequest(
            "missing images field",
            lambda c, url: c.post(
                f"{url}/predict", files=[("image", ("golden-0.png", valid_image, "image/png"))]
            ),
        ),
    ]


def check_refused(client: httpx.Client, url: str, bad: BadRequest) -> Check:
    """One bad request: passed when answered 4xx with a JSON error message."""
    name = f"bad request: {bad.name}"
    try:
        response = bad.send(client, url)
    except httpx.TransportError as error:
        return Check(name, False, f"no answer ({type(error).__name__}: {error})")
    message = _error_message(response)
    if not 400 <= response.status_code < 500:
        return Check(name, False, f"HTTP {response.status_code}, expected 4xx: {_body(response)}")
    if message is None:
        return Check(
            name, False, f"HTTP {response.status_code} without a JSON error: {_body(response)}"
        )
    return Check(name, True, f"HTTP {response.status_code}: {message}")


def check_ready(client: httpx.Client, url: str) -> Check:
    name = "still ready after the bad requests"
    try:
        status = client.get(f"{url}/readyz").status_code
    except httpx.TransportError as error:
        return Check(name, False, f"GET /readyz: no answer ({type(error).__name__})")
    return Check(name, status == 200, f"GET /readyz: HTTP {status}")


def validate(url: str, golden: Golden, max_images: int) -> tuple[list[Check], Latency]:
    """Every check against the server at `url`; the single-image latency."""
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        single, latency = check_single(client, url, golden)
        checks = [single, check_several(client, url, golden, max_images)]
        checks += [
            check_refused(client, url, bad) for bad in bad_requests(golden.files[0], max_images)
        ]
        checks.append(check_ready(client, url))
    return checks, latency


def _error_message(response: httpx.Response) -> str | None:
    try:
        message = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return message if isinstance(message, str) and message.strip() else None


def _body(response: httpx.Response, limit: int = 160) -> str:
    text = " ".join(response.text.split())
    return text[:limit] + ("..." if len(text) > limit else "")
