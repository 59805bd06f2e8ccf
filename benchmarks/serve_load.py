"""serve_load: the BentoML service under load, batched vs unbatched vs a hand-written FastAPI.

Run with ``python -m benchmarks.serve_load`` (after ``make run``: it serves the champion that the
package stage saved into the project's BentoML store). In one run, one server at a time:

- batched: ``bentoml serve deploy.service:Classifier`` with adaptive batching, as shipped
  (params.yaml `serve`: max_batch_size, max_latency_ms, max_concurrency, workers);
- unbatched: the same service with ``SIXFOLD_SERVE_BATCHING=off``;
- fastapi: ``uvicorn benchmarks.rivals.fastapi_rival:app`` (one worker), the same ONNX file and
  the same preprocessing, one model call per request (what many users write by hand).

Each gets `CONCURRENCY` clients for `DURATION_S` seconds from `hey` (Debian's package; the
project's set-up installs it), every request one multipart `images` file: the same seeded
digits test image as a PNG. The server is pinned to one core and hey to another (`taskset`):
on 2 cores a Python load generator mostly measures itself (a threaded httpx client reached 34
requests/s where hey reached 144), and an unpinned one takes the server's core. Each server is
warmed up (`WARMUP_S` of the same load: onnxruntime's first runs, BentoML's batching dispatcher
fitting its latency model) before the measured run.

Writes reports/bench/serve_load.json: batched_rps, unbatched_rps, fastapi_rps (2xx responses per
second), ratio (batched/unbatched), p50_ms and p99_ms (the batched service), errors (non-2xx
responses and failed requests, per server) and the serve settings measured. Targets (issue 11):
no errors, batched_rps >= 1.5 x unbatched_rps and >= fastapi_rps, p99_ms <= 150.

Measured on the digits model (2 shared cores, params.yaml as shipped): batched 135-182,
unbatched 133-177, fastapi 816-1585 requests/s, batched p99 610-1040 ms, no errors. The model's
run is not what a request costs: 0.065 ms for one image in onnxruntime, against ~5.5 ms of
service per request (an empty BentoML 1.4 endpoint alone serves 260-440 requests/s on one
core), so merging runs saves under 2%.
"""

from __future__ import annotations

import io
import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import LAYOUT, VENV_BIN, Check, finish
from benchmarks.rivals.fastapi_rival import MODEL_ENV as RIVAL_MODEL_ENV
from tasks.core.config import Params, load_params
from tasks.data.packed import load_split
from tasks.packaging.server import (
    LOOPBACK,
    ServerFailed,
    bentoml_serve_command,
    free_port,
    running,
)
from tasks.serving.guard import KEY_VARIABLE
from tasks.serving.logbook import LOG_DIR_VARIABLE
from tasks.serving.store import bentoml_environment, save_champion, saved_model

CONCURRENCY = 32
DURATION_S = 20
WARMUP_S = 5
TARGET_RATIO = 1.5  # batching must pay clearly, not marginally
TARGET_P99_MS = 150.0
BOUNDARY = "sixfold-serve-load-boundary"
SERVICE = "deploy.service:Classifier"
RIVAL_APP = "benchmarks.rivals.fastapi_rival:app"
BATCHING_ENV = "SIXFOLD_SERVE_BATCHING"  # deploy.service.BATCHING_VARIABLE (importing it serves)


@dataclass(frozen=True)
class LoadResult:
    """What hey measured against one server."""

    requests: int  # responses and failed requests, all
    ok: int  # 2xx responses
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)  # status code -> responses
    failures: dict[str, int] = field(default_factory=dict)  # hey's error line -> count

    @property
    def rps(self) -> float:
        """Successful requests per second (hey's own Requests/sec counts failures too)."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.requests - self.ok


_TOTAL = re.compile(r"^\s*Total:\s+([\d.]+) secs", re.M)
_SLOWEST = re.compile(r"^\s*Slowest:\s+([\d.]+) secs", re.M)
_PERCENTILE = re.compile(r"^\s*(\d+)% in ([\d.]+) secs", re.M)
_STATUS = re.compile(r"^\s*\[(\d{3})\]\s+(\d+) responses", re.M)
_FAILURE = re.compile(r"^\s*\[(\d+)\]\s+(.+?)\s*$")


def parse_hey(output: str) -> LoadResult:
    """hey's summary -> LoadResult. Raises ValueError naming what is missing.

    hey's percentiles come from every response it got (non-2xx included; failed requests have
    none). With fewer than 100 responses hey prints no 99% line; the slowest stands in for it.
    """
    total = _TOTAL.search(output)
    if total is None:
        raise ValueError(f"hey's output has no 'Total: ... secs' line:\n{output[-2000:]}")
    statuses = {code: int(count) for code, count in _STATUS.findall(output)}
    failures: dict[str, int] = {}
    if "Error distribution:" in output:
        for line in output.split("Error distribution:", 1)[1].splitlines():
            if match := _FAILURE.match(line):
                failures[match.group(2)] = failures.get(match.group(2), 0) + int(match.group(1))
    percentiles = {int(p): float(s) * 1000 for p, s in _PERCENTILE.findall(output) if int(p) > 0}
    slowest = _SLOWEST.search(output)
    slowest_ms = float(slowest.group(1)) * 1000 if slowest else float("nan")
    responses = sum(statuses.values())
    return LoadResult(
        requests=responses + sum(failures.values()),
        ok=sum(count for code, count in statuses.items() if code.startswith("2")),
        seconds=float(total.group(1)),
        p50_ms=percentiles.get(50, float("nan")),
        p99_ms=percentiles.get(99, slowest_ms),
        statuses=statuses,
        failures=failures,
    )


def multipart_body(png: bytes, boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body with one `images` file, as `curl -F images=@digit.png` sends."""
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="images"; filename="digit.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + png + f"\r\n--{boundary}--\r\n".encode()


def digit_png(params: Params) -> bytes:
    """One digits test image, chosen with params.seed, as PNG bytes (its packed pixels)."""
    images, _ = load_split("test", LAYOUT.packed_dir)
    index = int(np.random.default_rng(params.seed).integers(len(images)))
    pixels = images[index]  # uint8 (C, H, W)
    image = Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def two_cores() -> tuple[str, str]:
    """The server's core and the load generator's: two different cores this process may use."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit(
            f"serve_load: needs 2 cores (one for the server, one for hey), this process may use "
            f"{len(cores)}; on one core the load generator takes the server's time"
        )
    return str(cores[0]), str(cores[1])


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(
            f"serve_load: `{name}` is not installed; run `make bench-tools` (or "
            f"`apt-get install -y {name}`): a Python load generator on 2 cores measures itself, "
            "not the server"
        )
    return path


@dataclass(frozen=True)
class Server:
    """One server to measure: its command line (run pinned to a core) and its environment."""

    name: str
    argv: list[str]
    env: dict[str, str]


def servers(port: int, model_dir: Path) -> list[Server]:
    """The three servers, each started in turn on `port`, in the repository root."""
    service_env = bentoml_environment(LAYOUT)
    bentoml = bentoml_serve_command(SERVICE, port)
    host = ["--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    rival = [str(VENV_BIN / "python"), "-m", "uvicorn", RIVAL_APP, *host]
    return [
        Server("batched", bentoml, {**service_env, BATCHING_ENV: "on"}),
        Server("unbatched", bentoml, {**service_env, BATCHING_ENV: "off"}),
        Server("fastapi", [*rival, "--log-level", "warning"], {RIVAL_MODEL_ENV: str(model_dir)}),
    ]


def hey(url: str, body: Path, seconds: int, core: str) -> LoadResult:
    """`CONCURRENCY` clients POSTing `body` to `url` for `seconds`, hey pinned to `core`."""
    argv = ["taskset", "-c", core, require_tool("hey"), "-c", str(CONCURRENCY)]
    argv += ["-z", f"{seconds}s", "-m", "POST", "-D", str(body)]
    argv += ["-T", f"multipart/form-data; boundary={BOUNDARY}", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise SystemExit(f"serve_load: hey failed ({done.returncode}): {done.stderr[-2000:]}")
    return parse_hey(done.stdout)


def measure(
    server: Server, port: int, body: Path, cores: tuple[str, str], log_dir: Path
) -> LoadResult:
    """Start `server` pinned to the first core, warm it up, measure it, stop it (its workers
    included: `tasks.packaging.server.running`, the package stage's helper). Its predictions are
    logged under `log_dir`, not in the project's prediction log (drift monitoring reads that),
    and a user's API key is not passed on (every request would get 401)."""
    command = ["taskset", "-c", cores[0], *server.argv]
    environment = {**os.environ, **server.env, LOG_DIR_VARIABLE: str(log_dir)}
    environment.pop(KEY_VARIABLE, None)
    try:
        with running(command, port, environment, LAYOUT.root) as started:
            hey(f"{started.url}/predict", body, WARMUP_S, cores[1])
            result = hey(f"{started.url}/predict", body, DURATION_S, cores[1])
    except ServerFailed as error:
        raise SystemExit(f"serve_load: the {server.name} server: {error}") from None
    print(
        f"serve_load: {server.name}: {result.rps:.1f} requests/s, p50 {result.p50_ms:.1f} ms, "
        f"p99 {result.p99_ms:.1f} ms, {result.errors} errors {result.statuses} {result.failures}"
    )
    return result


def speedup(batched: LoadResult, unbatched: LoadResult) -> float:
    return batched.rps / unbatched.rps if unbatched.rps > 0 else float("inf")


def checks(batched: LoadResult, unbatched: LoadResult, fastapi: LoadResult) -> list[Check]:
    """The issue's targets: no errors anywhere, batching pays, it beats the rival, p99 bounded."""
    errors = batched.errors + unbatched.errors + fastapi.errors
    return [
        Check("errors", float(errors), "<=", 0.0),
        Check("ratio", speedup(batched, unbatched), ">=", TARGET_RATIO),
        Check("batched_rps", batched.rps, ">=", fastapi.rps),
        Check("p99_ms", batched.p99_ms, "<=", TARGET_P99_MS),
    ]


def served_model() -> tuple[str, Path]:
    """The champion, saved into the project's BentoML store (a no-op when it is already the
    latest model there): its tag and the folder of the files the service serves."""
    os.environ.update(bentoml_environment(LAYOUT))  # before BentoML first touches a store
    tag = save_champion(LAYOUT)
    return tag, Path(saved_model(tag).path)


def main() -> None:
    params = load_params(LAYOUT.params_file)
    cores = two_cores()
    require_tool("hey")
    tag, model_dir = served_model()
    port = free_port()
    results: dict[str, LoadResult] = {}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as folder:
        body = Path(folder) / "body.multipart"
        body.write_bytes(multipart_body(digit_png(params)))
        for server in servers(port, model_dir):
            results[server.name] = measure(server, port, body, cores, Path(folder) / "log")
    batched, unbatched, fastapi = results["batched"], results["unbatched"], results["fastapi"]
    finish(
        "serve_load",
        {
            "batched_rps": batched.rps,
            "unbatched_rps": unbatched.rps,
            "fastapi_rps": fastapi.rps,
            "ratio": speedup(batched, unbatched),
            "p50_ms": batched.p50_ms,
            "p99_ms": batched.p99_ms,
            "errors": sum(result.errors for result in results.values()),  # per server: servers
            "servers": {name: {**asdict(r), "rps": r.rps} for name, r in results.items()},
            "settings": {
                "max_batch_size": params.serve.max_batch_size,
                "max_latency_ms": params.serve.max_latency_ms,
                "max_concurrency": params.serve.max_concurrency,
                "workers": params.serve.workers,
            },
            "concurrency": CONCURRENCY,
            "duration_s": DURATION_S,
            "warmup_s": WARMUP_S,
            "server_core": cores[0],
            "load_core": cores[1],
            "model": tag,
            "machine": platform.machine(),
        },
        checks(batched, unbatched, fastapi),
    )


if __name__ == "__main__":
    main()
