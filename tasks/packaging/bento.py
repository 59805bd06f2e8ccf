"""Packaging the champion: save it into the project's BentoML store, build the bento, serve the
built bento and prove it answers as the model (the package stage, `tasks/package.py`, says how).

Continual learning (`tasks.continual`) builds and validates the bento of its challenger with
the same function before it records the promotion, so a bento is validated one way whoever built
it, and a bento that fails leaves the registry's champion as it was. :func:`package` holds the
registry lock (`tasks.registry.lock`) from reading the champion to writing its report.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tasks.core.config import Params
from tasks.core.errors import UserError, require
from tasks.core.io import write_json
from tasks.core.layout import Layout
from tasks.data.packed import load_split
from tasks.packaging.build import build_bento, child_environment, use_project_store
from tasks.packaging.golden import Golden, golden_set, image_rules
from tasks.packaging.server import ServerFailed, bentoml_serve_command, free_port, running
from tasks.packaging.validation import Check, Latency, validate
from tasks.registry.lock import registry_lock
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


def package(
    params: Params, layout: Layout | None = None, candidate: EntryFiles | None = None
) -> dict[str, Any]:
    """Save the champion, build the bento, validate it served; write reports/package.json.

    `candidate`: a registered model to package instead of the champion (continual learning's
    challenger, packaged before its promotion is recorded).

    Raises:
        UserError: no champion, a build that fails, or (after the report is written) a check
            that fails.
    """
    layout = layout or Layout.discover()
    with registry_lock(layout.registry_dir, "package"):
        return package_locked(params, layout, candidate)


def package_locked(params: Params, layout: Layout, candidate: EntryFiles | None) -> dict[str, Any]:
    """:func:`package`, holding the registry lock."""
    require(layout.packed_dir / "test_x.npy")
    try:
        entry = candidate or current_champion(layout)
    except NothingToPackage as nothing:  # not a failure of the run: there is nothing to serve
        return nothing_packaged(layout, str(nothing))
    use_project_store(layout)
    model_tag = save_champion(layout, entry)
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
