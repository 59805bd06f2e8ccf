"""The package stage's pieces, fast: golden requests, the answer comparison, the checks against a
small real HTTP server (stdlib), and starting/stopping a server process group.

The whole stage against a real `bentoml serve` is tests/system/test_package.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tasks.core.config import load_params
from tasks.core.errors import UserError
from tasks.core.layout import Layout
from tasks.package import current_champion, failure_line, package, summary_line
from tasks.packaging.build import child_environment
from tasks.packaging.golden import Golden, golden_indices, png_file
from tasks.packaging.server import ServerFailed, free_port, log_tail, running
from tasks.packaging.validation import (
    PROBABILITY_ATOL,
    Check,
    Latency,
    answer_problems,
    bad_requests,
    check_refused,
)
from tests.conftest import REPO_ROOT

CLASSES = ["0", "1", "2"]


def golden_of(probabilities: list[list[float]]) -> Golden:
    count = len(probabilities)
    return Golden(list(range(count)), [b""] * count, np.asarray(probabilities), CLASSES)


def answer(probabilities: list[list[float]], status: int = 200) -> httpx.Response:
    predictions = [
        {
            "label": CLASSES[int(np.argmax(row))],
            "confidence": max(row),
            "probabilities": dict(zip(CLASSES, row, strict=True)),
        }
        for row in probabilities
    ]
    return httpx.Response(status, json={"predictions": predictions})


# ------------------------------------------------------------------ golden requests


def test_golden_indices_are_seeded_distinct_and_capped() -> None:
    first = golden_indices(270, 32, seed=42)
    assert first == golden_indices(270, 32, seed=42)
    assert len(set(first)) == 32 and all(0 <= i < 270 for i in first)
    assert first != golden_indices(270, 32, seed=43)
    assert sorted(golden_indices(5, 32, seed=42)) == [0, 1, 2, 3, 4]
    with pytest.raises(UserError, match="test split is empty"):
        golden_indices(0, 32, seed=42)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_files_keep_every_pixel(channels: int) -> None:
    image = np.random.default_rng(0).integers(0, 256, (channels, 16, 12), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(png_file(image))))
    decoded = decoded[None] if channels == 1 else decoded.transpose(2, 0, 1)
    assert np.array_equal(decoded, image)


# ------------------------------------------------------------------ comparing answers


def test_an_equal_answer_has_no_problem() -> None:
    rows = [[0.1, 0.7, 0.2], [0.8, 0.1, 0.1]]
    problems, largest = answer_problems(answer(rows), golden_of(rows), [0, 1])
    assert problems == [] and largest == 0.0


def test_a_different_label_or_probability_or_count_is_named() -> None:
    expected = [[0.1, 0.7, 0.2], [0.8, 0.1, 0.1]]
    golden = golden_of(expected)
    swapped = answer([[0.7, 0.1, 0.2], [0.8, 0.1, 0.1]])
    problems, _ = answer_problems(swapped, golden, [0, 1])
    assert problems == ["golden image 0: served label 0, offline 1"]
    off = 10 * PROBABILITY_ATOL
    drifted = answer([[0.1, 0.7 + off, 0.2 - off], [0.8, 0.1, 0.1]])
    problems, largest = answer_problems(drifted, golden, [0, 1])
    assert len(problems) == 1 and "probabilities differ by 0.0001" in problems[0]
    assert largest == pytest.approx(off)
    problems, _ = answer_problems(answer(expected[:1]), golden, [0, 1])
    assert problems == ["request of golden image(s) [0, 1]: 1 predictions for 2 images"]
    broken = httpx.Response(500, json={"error": "boom"})
    problems, _ = answer_problems(broken, golden, [0])
    assert problems[0].startswith("request of golden image(s) [0]: HTTP 500")


def test_latency_percentiles_in_milliseconds() -> None:
    latency = Latency.of([0.010] * 98 + [0.100, 0.200])
    assert latency.requests == 100 and latency.p50 == 10.0
    assert 100.0 < latency.p99 < 200.0
    assert Latency.of([]) == Latency(0.0, 0.0, 0)


# ------------------------------------------------------------------ bad requests, real HTTP


class FixedAnswer(BaseHTTPRequestHandler):
    """Answers every POST by the first path segment: /<status>-<json|text>/... ."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status, kind = self.path.strip("/").split("/")[0].split("-")
        body = json.dumps({"error": "refused"}) if kind == "json" else "refused"
        self.send_response(int(status))
        self.send_header("Content-Type", "application/json" if kind == "json" else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fixed_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FixedAnswer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("answer_kind", "passes", "detail"),
    [
        ("400-json", True, "HTTP 400: refused"),
        ("413-json", True, "HTTP 413: refused"),
        ("400-text", False, "HTTP 400 without a JSON error"),
        ("500-json", False, "HTTP 500, expected 4xx"),
        ("200-json", False, "HTTP 200, expected 4xx"),
    ],
)
def test_every_bad_request_must_get_a_4xx_with_an_error(
    fixed_server: str, answer_kind: str, passes: bool, detail: str
) -> None:
    requests = bad_requests(png_file(np.zeros((1, 8, 8), np.uint8)), max_images=2)
    assert len(requests) == 5
    with httpx.Client(timeout=10) as client:
        checks = [check_refused(client, f"{fixed_server}/{answer_kind}", bad) for bad in requests]
    assert all(check.passed is passes for check in checks), checks
    assert all(check.detail.startswith(detail) for check in checks), checks
    assert checks[1].name == "bad request: too many images (3 > serve.max_images)"


def test_a_server_that_does_not_answer_fails_the_check() -> None:
    bad = bad_requests(b"", max_images=1)[0]
    with httpx.Client(timeout=2) as client:
        check = check_refused(client, f"http://127.0.0.1:{free_port()}", bad)
    assert not check.passed and check.detail.startswith("no answer (ConnectError")


# ------------------------------------------------------------------ the server process

# A server with a worker as BentoML starts them: in a session of its own (out of reach of the
# server's process group), and one that ignores SIGTERM. The server answers GET /readyz 200
# after `ready_after` seconds.
WORKER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
SERVER = textwrap.dedent(
    f"""
    import subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    port, ready_after, pid_file = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    worker = subprocess.Popen([sys.executable, "-c", {WORKER!r}], start_new_session=True)
    open(pid_file, "w").write(str(worker.pid))
    started = time.monotonic()
    class Ready(BaseHTTPRequestHandler):
        def do_GET(self):
            ready = time.monotonic() - started > ready_after
            self.send_response(200 if ready and self.path == "/readyz" else 503)
            self.end_headers()
        def log_message(self, *args):
            pass
    print("serving", flush=True)
    HTTPServer(("127.0.0.1", port), Ready).serve_forever()
    """
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def serve_command(port: int, ready_after: float, pid_file: Path) -> list[str]:
    return [sys.executable, "-c", SERVER, str(port), str(ready_after), str(pid_file)]


def test_a_server_is_awaited_then_stopped_with_every_process_it_started(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "worker.pid"
    command = serve_command(port, 0.5, pid_file)
    with running(command, port, os.environ, tmp_path, timeout=30, grace=1) as server:
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        leader, worker = server.process.pid, int(pid_file.read_text())
        assert alive(worker)
    assert server.process.returncode is not None and not alive(leader)
    deadline = time.monotonic() + 5  # init reaps the orphaned worker
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker)


def test_a_server_stopped_by_a_failure_inside_the_block(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "worker.pid"
    command = serve_command(port, 0, pid_file)
    with (
        pytest.raises(RuntimeError, match="a check crashed"),
        running(command, port, os.environ, tmp_path, grace=1) as server,
    ):
        raise RuntimeError("a check crashed")
    assert server.process.returncode is not None


def test_a_server_that_never_gets_ready_is_stopped_with_one_line(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "worker.pid"
    started = time.monotonic()
    command = serve_command(port, 600, pid_file)
    with (
        pytest.raises(ServerFailed) as failure,
        running(command, port, os.environ, tmp_path, timeout=2, grace=1),
    ):
        pass
    message = str(failure.value)
    assert time.monotonic() - started < 20 and not alive(int(pid_file.read_text()))
    assert message.startswith("the server was not ready within 2 s (GET /readyz: HTTP 503)")
    assert "serving" in message and "\n" not in message


def test_a_server_that_exits_names_its_last_words(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('model file is corrupt'); sys.exit(3)"]
    with (
        pytest.raises(ServerFailed, match="exited with code 3 before it was ready: model file"),
        running(command, free_port(), os.environ, tmp_path, timeout=30),
    ):
        pass


def test_a_stage_terminated_while_serving_still_stops_the_server(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "worker.pid"
    stage = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        from tasks.packaging.server import running
        command = {serve_command(port, 0, pid_file)!r}
        with running(command, {port}, os.environ, Path({str(tmp_path)!r}), grace=1) as server:
            print(server.process.pid, flush=True)
            time.sleep(600)
        """
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", stage], stdout=subprocess.PIPE, text=True, env=environment
    )
    leader = int(process.stdout.readline())
    worker = int(pid_file.read_text())
    process.terminate()  # SIGTERM, as DVC or Prefect cancel a stage
    assert process.wait(timeout=30) == 143
    assert not alive(leader) and not alive(worker)


def test_a_service_failing_at_every_start_is_given_up_on(tmp_path: Path) -> None:
    # what BentoML's arbiter does with a worker that cannot start: restart it, forever
    failing = "ValueError: model.onnx is corrupt\\nERROR Application startup failed. Exiting."
    script = f"import time\nfor _ in range(3):\n    print('{failing}', flush=True)\n"
    script += "    time.sleep(0.3)\ntime.sleep(600)"
    started = time.monotonic()
    with (
        pytest.raises(ServerFailed) as failure,
        running([sys.executable, "-c", script], free_port(), os.environ, tmp_path, grace=1),
    ):
        pass
    assert time.monotonic() - started < 20
    assert str(failure.value) == (
        "the service failed to start 2 times, given up: ValueError: model.onnx is corrupt"
    )


def test_log_tail_keeps_the_last_lines_on_one_line(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("one\n\ntwo\nthree\nfour\n")
    assert log_tail(log, 2) == "three | four"
    assert log_tail(tmp_path / "missing.log") == ""


# ------------------------------------------------------------------ the stage's own pieces


def test_the_store_is_the_projects_and_telemetry_is_off(tmp_path: Path) -> None:
    environment = child_environment(Layout(tmp_path), {"HOME": "/home/someone"})
    assert environment["BENTOML_HOME"] == str(tmp_path.resolve() / "models" / "bentoml")
    assert environment["BENTOML_DO_NOT_TRACK"] == "true"
    assert environment["HOME"] == "/home/someone"


def test_no_champion_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(UserError) as failure:
        current_champion(Layout(tmp_path))
    message = str(failure.value)
    assert message.startswith("no champion to package: the promotion gate has rejected")
    assert "reports/gate.json" in message and "dvc repro" in message


def test_the_report_and_its_lines() -> None:
    checks = [
        Check("server starts", True, "ready after 8.0 s"),
        Check("golden images, one per request", True, "32 images in 32 requests: ..."),
        *[Check(f"bad request: kind {i}", True, "HTTP 400: refused") for i in range(5)],
    ]
    report = {
        "bento": "sixfold:abc",
        "checks": [check.as_dict() for check in checks],
        "latency_ms": {"p50": 12.3, "p99": 40.1, "requests": 32},
        "passed": True,
    }
    assert summary_line(report) == (
        "package: bento sixfold:abc validated (32 golden images match, 5 bad requests 4xx, "
        "p50 12 ms, p99 40 ms)"
    )
    failed = [Check("bad request: kind 9", False, "HTTP 500, expected 4xx: boom")]
    report = {**report, "checks": [c.as_dict() for c in [*checks, *failed]], "passed": False}
    assert summary_line(report) == failure_line(report, failed)
    assert summary_line(report).startswith(
        "package: bento sixfold:abc failed the check 'bad request: kind 9': HTTP 500"
    )


def test_without_a_champion_nothing_is_packaged_and_the_run_goes_on(tmp_path: Path) -> None:
    """A gate that has rejected every model so far is not a failure of the run: the stage says
    so in one line and writes its (empty) outputs, so DVC records it and the report follows."""
    layout = Layout(tmp_path)
    layout.packed_dir.mkdir(parents=True)
    np.save(layout.packed_dir / "test_x.npy", np.zeros((2, 1, 8, 8), dtype=np.uint8))
    params = load_params(REPO_ROOT / "params.yaml")
    report = package(params, layout)
    assert report["passed"] is False and report["skipped"].startswith("no champion to package")
    assert json.loads(layout.package_report.read_text()) == report
    assert (layout.bentoml_home / "models").is_dir() and (layout.bentoml_home / "bentos").is_dir()
    assert summary_line(report).startswith("package: nothing packaged: no champion to package")
