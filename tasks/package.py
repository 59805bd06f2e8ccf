"""package: save the champion as a bento, serve the built bento, and prove it answers as the model.

Run on its own with ``python -m tasks.package`` (after promote); ``--show`` prints the last
run's line without doing anything.

The champion of the model registry is saved into the project's own BentoML store
(`models/bentoml`, BENTOML_HOME; nothing goes to the home folder) as `sixfold-classifier:<id>`,
and the bento is built from `deploy/bentofile.yaml`. Then the BUILT bento is infra-validated
the way it will run: `bentoml serve <bento>` on a free 127.0.0.1 port, and real HTTP requests:

- `serve.golden_images` seeded test images as PNG files, one per request and several per
  request: every served label and probability (within 1e-5) must equal what the champion's
  served ONNX file gives offline on the same bytes, decoded and preprocessed the same way;
- bad requests (undecodable bytes, too many images, a string in the file field, a JSON body, a
  missing field) must each get a 4xx with a JSON error, never a 2xx or a 5xx, and the server
  must still be ready afterwards;
- the p50/p99 latency of the single-image requests is recorded.

The server is stopped whatever happens. `reports/package.json` records the bento, the model,
every check and the latency; then the stage fails (exit 1, one line naming the failed check) if
any check failed. Without a champion (the gate has rejected every model so far) it stops with
one line saying how to get one.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tasks.core.config import Params, load_params_or_exit
from tasks.core.errors import UserError, require
from tasks.core.io import read_json, write_json
from tasks.core.layout import Layout
from tasks.core.runner import stage_main
from tasks.data.packed import load_split
from tasks.packaging.build import build_bento, child_environment, use_project_store
from tasks.packaging.golden import Golden, golden_set, image_rules
from tasks.packaging.server import ServerFailed, bentoml_serve_command, free_port, running
from tasks.packaging.validation import Check, Latency, validate
from tasks.registry.store import EntryFiles, NoChampion, champion
from tasks.serving.guard import KEY_VARIABLE
from tasks.serving.logbook import LOG_DIR_VARIABLE
from tasks.serving.store import TAG_VARIABLE, save_champion

# Variables a user's shell may set for `make serve` that would change what is validated: the
# served model is pinned to the champion, validation runs without an API key and with the
# service's default batching (deploy/service.py reads SIXFOLD_SERVE_BATCHING).
UNSET_FOR_VALIDATION = (KEY_VARIABLE, "SIXFOLD_SERVE_BATCHING")


class ValidationFailed(UserError):
    """The built bento failed one of the infra-validation checks."""


class NothingToPackage(UserError):
    """No champion yet: the gate has rejected every model so far."""


def current_champion(layout: Layout) -> EntryFiles:
    """The registry's champion; NothingToPackage, saying how to get one, when there is none."""
    try:
        return champion(layout.registry_dir)
    except NoChampion:
        raise NothingToPackage(
            f"no champion to package: the promotion gate has rejected every model so far "
            f"({layout.relative(layout.gate_report)} says why); improve the model or the data "
            "and run the pipeline again (`dvc repro`): the first model that passes the gate "
            "becomes the champion"
        ) from None


def serve_and_validate(
    layout: Layout, bento_tag: str, model_tag: str, golden: Golden, max_images: int
) -> tuple[list[Check], Latency | None]:
    """Serve the built bento, run every check against it, stop it; the checks and latency."""
    environment = child_environment(layout)
    for name in UNSET_FOR_VALIDATION:
        environment.pop(name, None)
    environment[TAG_VARIABLE] = model_tag
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sixfold-package-") as scratch:
        # the golden requests are not traffic: they stay out of the prediction log (and out
        # of the bento's folder, where a relative serve.log_dir would put it)
        environment[LOG_DIR_VARIABLE] = scratch
        started = time.monotonic()
        try:
            with running(
                bentoml_serve_command(bento_tag, port), port, environment, Path(scratch)
            ) as server:
                waited = time.monotonic() - started
                ready = Check("server starts", True, f"ready after {waited:.1f} s")
                checks, latency = validate(server.url, golden, max_images)
        except ServerFailed as error:
            return [Check("server starts", False, str(error))], None
    return [ready, *checks], latency


def package_report(
    bento_tag: str,
    model_tag: str,
    entry: EntryFiles,
    checks: list[Check],
    latency: Latency | None,
) -> dict[str, Any]:
    """`reports/package.json`."""
    return {
        "bento": bento_tag,
        "model": model_tag,
        "champion": entry.entry.id,
        "served_format": entry.entry.served_format,
        "checks": [check.as_dict() for check in checks],
        "latency_ms": {
            "p50": latency.p50 if latency else None,
            "p99": latency.p99 if latency else None,
            "requests": latency.requests if latency else 0,
        },
        "passed": all(check.passed for check in checks),
    }


def package(params: Params, layout: Layout | None = None) -> dict[str, Any]:
    """Save the champion, build the bento, validate it served; write reports/package.json.

    Raises:
        UserError: no champion, a build that fails, or (after the report is written) a check
            that fails.
    """
    layout = layout or Layout.discover()
    require(layout.packed_dir / "test_x.npy")
    try:
        entry = current_champion(layout)
    except NothingToPackage as nothing:  # not a failure of the run: there is nothing to serve
        return nothing_packaged(layout, str(nothing))
    use_project_store(layout)
    model_tag = save_champion(layout)
    os.environ[TAG_VARIABLE] = model_tag  # the bento packs the champion, whatever the user set
    bento_tag = build_bento(layout)
    test_images, _ = load_split("test", layout.packed_dir)
    rules = image_rules(params.data, entry.card)
    golden = golden_set(
        test_images, params.serve.golden_images, params.seed, entry.served_onnx, rules
    )
    checks, latency = serve_and_validate(
        layout, bento_tag, model_tag, golden, params.serve.max_images
    )
    report = package_report(bento_tag, model_tag, entry, checks, latency)
    write_json(layout.package_report, report)
    failed = [check for check in checks if not check.passed]
    if failed:
        raise ValidationFailed(failure_line(report, failed))
    return report


def nothing_packaged(layout: Layout, reason: str) -> dict[str, Any]:
    """The report (and the empty stores DVC expects as outputs) when there is no champion."""
    for store in ("models", "bentos"):
        (layout.bentoml_home / store).mkdir(parents=True, exist_ok=True)
    report = {
        "bento": None,
        "model": None,
        "champion": None,
        "served_format": None,
        "checks": [],
        "latency_ms": None,
        "passed": False,
        "skipped": reason,
    }
    write_json(layout.package_report, report)
    return report


def failure_line(report: dict[str, Any], failed: list[Check]) -> str:
    first = failed[0]
    more = f"; {len(failed) - 1} more checks failed" if len(failed) > 1 else ""
    return (
        f"package: bento {report['bento']} failed the check '{first.name}': {first.detail}{more}; "
        "reports/package.json lists every check"
    )


def summary_line(report: dict[str, Any]) -> str:
    """One line: the bento and what its validation showed (`make run` prints it)."""
    if report.get("skipped"):
        return f"package: nothing packaged: {report['skipped']}"
    checks = [Check(**check) for check in report["checks"]]
    if not report["passed"]:
        return failure_line(report, [check for check in checks if not check.passed])
    refused = sum(1 for check in checks if check.name.startswith("bad request"))
    latency = report["latency_ms"]  # one single-image request per golden image
    return (
        f"package: bento {report['bento']} validated ({latency['requests']} golden images match, "
        f"{refused} bad requests 4xx, p50 {latency['p50']:.0f} ms, p99 {latency['p99']:.0f} ms)"
    )


def main() -> None:
    layout = Layout.discover()
    if sys.argv[1:] == ["--show"]:  # the last run's line, computing nothing
        require(layout.package_report)
        print(summary_line(read_json(layout.package_report)))
        return
    params = load_params_or_exit(layout.params_file)
    print(summary_line(package(params, layout)))


if __name__ == "__main__":
    stage_main(
        main,
        options={"--show": "print the last result (reports/package.json); build and serve nothing"},
    )
