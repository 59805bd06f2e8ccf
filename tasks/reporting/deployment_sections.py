"""The report's sections on what the gate's decision led to: the model registry's history and
the served bento with its validation.

Both files are DVC outputs the report stage declares (models/registry/registry.json of promote,
reports/package.json of package), but continual learning rewrites them outside DVC when it
promotes a challenger, so these sections say when what they show came from it.

A registry row's accuracy is measured on that model's own registered test set, and test sets
differ between rows (a continual-learning challenger is judged on its parent's test set plus its
batch's test part), so every row names its test set and the page lists each one with its
sha256: two rows are comparable only when their test sets are the same.
"""

from __future__ import annotations

import string
from typing import Any

from tasks.reporting.html import (
    ABSENT,
    badge,
    code,
    key_values,
    moment,
    note,
    number,
    paragraph,
    percent,
    table,
    text,
)
from tasks.reporting.inputs import REGISTRY_FILE, SectionInputs, dig, mapping, sequence

SHORT = 12  # hex digits shown of a hash
MAX_EVENTS = 20  # of the registry's history, newest first; registry.json holds them all
TEST_SET_FILE = "test.npz"  # tasks.registry.store.TEST_SET: the images a model was judged on
STATUS_GOOD = {"champion": True, "rejected": False}  # retired: neither


def short(value: object) -> str:
    """A hash cut to SHORT hex digits, as code; a dash when there is none."""
    return code(str(value)[:SHORT]) if isinstance(value, str) and value else ABSENT


def test_set_names(candidates: list[dict[str, Any]]) -> dict[str, str]:
    """Each distinct test set (by its test.npz sha256, else the data version) -> A, B, ...,
    in the order the registry first used it."""
    names: dict[str, str] = {}
    for entry in candidates:
        key = test_set_key(entry)
        if key is not None and key not in names:
            index = len(names)
            names[key] = string.ascii_uppercase[index] if index < 26 else f"T{index + 1}"
    return names


def test_set_key(entry: dict[str, Any]) -> str | None:
    """What identifies the images a registered model was judged on: the sha256 of its stored
    test.npz (the same arrays give the same bytes), else its data version."""
    digest = dig(entry, "files", TEST_SET_FILE, "sha256")
    if isinstance(digest, str) and digest:
        return f"sha256:{digest}"
    version = entry.get("data_version")
    return f"data version:{version}" if isinstance(version, str) and version else None


def _origin(entry: dict[str, Any]) -> str:
    if dig(entry, "lineage", "kind") == "continual":
        return f"continual learning, batch {code(dig(entry, 'lineage', 'batch'))}"
    return "the pipeline"


def _holds(entry: dict[str, Any], names: dict[str, str], by_id: dict[str, Any]) -> str:
    """What a test set holds, said from the first entry that used it."""
    if dig(entry, "lineage", "kind") == "continual":
        parent = by_id.get(str(entry.get("parent")))
        parent_set = names.get(test_set_key(parent) or "") if isinstance(parent, dict) else None
        old = f"test set {parent_set}" if parent_set else "the parent's test set"
        return (
            f"{old} of {code(entry.get('parent'))} + the test part of batch "
            f"{code(dig(entry, 'lineage', 'batch'))} "
            f"({number(dig(entry, 'lineage', 'test_images'))} images)"
        )
    return f"the pipeline's test split, data version {short(entry.get('data_version'))}"


def registry_history(inputs: SectionInputs) -> str:
    """Every judged model (newest first) with the test set of its accuracy, the test sets, and
    the latest events of the registry's history."""
    path = inputs.layout.registry_dir / REGISTRY_FILE
    registry = inputs.json(path)
    if registry is None:
        return ""
    candidates = [entry for entry in sequence(registry, "candidates") if isinstance(entry, dict)]
    champion = registry.get("champion")
    parts = [
        paragraph(
            f"{code(inputs.name(path))}: every model the gate has judged, kept by the "
            f"{code('promote')} stage (and by continual learning, outside DVC). Champion: "
            + (code(champion) if champion else "none yet")
            + "."
        )
    ]
    if not candidates:
        return "".join(parts) + paragraph("No model has been judged yet.")
    names = test_set_names(candidates)
    rows = []
    for entry in reversed(candidates):  # newest first
        status = entry.get("status")
        test_set = names.get(test_set_key(entry) or "")
        rows.append(
            [
                code(entry.get("id")),
                badge(status, STATUS_GOOD.get(str(status))),
                moment(entry.get("created")),
                percent(entry.get("accuracy")),
                f"{text(test_set)} ({number(entry.get('test_images'))} images)",
                _origin(entry),
                code(entry.get("parent")) if entry.get("parent") else ABSENT,
                code(entry.get("served_format")),
                short(entry.get("params_hash")),
            ]
        )
    headers = ["model", "status", "registered", "test accuracy", "measured on test set"]
    headers += ["from", "parent", "served as", "params hash"]
    parts.append(table(headers, rows, numeric=[3]))
    parts.append(_test_sets(candidates, names))
    parts.append(_events(registry, inputs.name(path)))
    return "".join(parts)


def _test_sets(candidates: list[dict[str, Any]], names: dict[str, str]) -> str:
    """The test sets of the accuracy column: images, sha256 of test.npz, what they hold."""
    by_id = {str(entry.get("id")): entry for entry in candidates}
    first: dict[str, dict[str, Any]] = {}
    for entry in candidates:
        first.setdefault(test_set_key(entry) or "", entry)
    rows = [
        [
            text(name),
            number(first[key].get("test_images")),
            short(dig(first[key], "files", TEST_SET_FILE, "sha256")),
            _holds(first[key], names, by_id),
        ]
        for key, name in names.items()
    ]
    advice = (
        paragraph(
            "Accuracies are comparable only between models measured on the same test set: a "
            "continual-learning challenger is judged on its parent's test set and its batch's "
            "test part."
        )
        if len(names) > 1
        else ""
    )
    return (
        "<h3>Test sets</h3>"
        + paragraph(
            f"Each model's test set is stored beside it ({code(TEST_SET_FILE)}, checkable with "
            f"{code('sha256sum')}); the same sha256 means the same images."
        )
        + table(["test set", "images", f"{TEST_SET_FILE} sha256", "holds"], rows, numeric=[1])
        + advice
    )


def _events(registry: dict[str, Any], name: str) -> str:
    """The history's latest events, newest first."""
    events = [event for event in sequence(registry, "events") if isinstance(event, dict)]
    shown = events[::-1][:MAX_EVENTS]
    rows = [
        [
            moment(event.get("time")),
            text(event.get("kind")),
            code(event.get("candidate")),
            text("; ".join(map(str, sequence(event, "reasons")))) if event.get("reasons") else "",
        ]
        for event in shown
    ]
    earlier = (
        paragraph(f"{len(events) - len(shown)} earlier events are in {code(name)}.")
        if len(events) > len(shown)
        else ""
    )
    return (
        f"<h3>History ({len(events)} events, newest first)</h3>"
        + table(["time", "event", "model", "reasons"], rows)
        + earlier
    )


def served_model(inputs: SectionInputs) -> str:
    """The bento that serves the champion: its validation checks over HTTP and its latency."""
    layout = inputs.layout
    path = layout.package_report
    report = inputs.json(path)
    if report is None:
        return ""
    if report.get("skipped"):
        return note(f"Nothing is served: {text(report.get('skipped'))}", "bad")
    passed = report.get("passed")
    latency = mapping(report, "latency_ms")
    parts = [
        paragraph(
            "Validation of the built bento: "
            + badge("passed" if passed is True else "failed", passed is True)
            + f" (the {code('package')} stage serves it with {code('bentoml serve')} on "
            "127.0.0.1 and sends real HTTP requests: golden test images must get the served "
            "ONNX file's answers, bad requests a 4xx)."
        ),
        key_values(
            [
                ("bento", code(report.get("bento"))),
                ("model in the project's BentoML store", code(report.get("model"))),
                ("champion served", code(report.get("champion"))),
                ("served format", code(report.get("served_format"))),
                (
                    "latency p50 / p99 per single-image request (round trip)",
                    f"{number(latency.get('p50'), 1)} / {number(latency.get('p99'), 1)} ms",
                ),
                ("requests timed", number(latency.get("requests"))),
            ]
        ),
    ]
    checks = [check for check in sequence(report, "checks") if isinstance(check, dict)]
    if checks:
        rows = [
            [
                text(check.get("name")),
                badge(
                    "passed" if check.get("passed") is True else "failed",
                    check.get("passed") is True,
                ),
                text(check.get("detail")),
            ]
            for check in checks
        ]
        parts.append(
            f"<h3>Checks ({len(checks)})</h3>" + table(["check", "result", "detail"], rows)
        )
    else:
        parts.append(inputs.absent_key(path, "checks"))
    parts.append(_served_versus_registry(inputs, report))
    return "".join(parts)


def _served_versus_registry(inputs: SectionInputs, report: dict[str, Any]) -> str:
    """A note when the bento does not serve the registry's champion, or when continual learning
    built it (after the pipeline's run)."""
    registry = inputs.optional_json(inputs.layout.registry_dir / REGISTRY_FILE)
    if registry is None:
        return ""
    served, champion = report.get("champion"), registry.get("champion")
    if champion and served != champion:
        return note(
            f"The registry's champion is {code(champion)}, but this bento serves "
            f"{code(served)}: {code('dvc repro package')} builds the champion's bento.",
            "bad",
        )
    entry = next(
        (e for e in sequence(registry, "candidates") if dig(e, "id") == served and served), None
    )
    if dig(entry, "lineage", "kind") == "continual":
        return note(
            f"This bento was built by continual learning when it promoted {code(served)} "
            f"(batch {code(dig(entry, 'lineage', 'batch'))}), after the pipeline's run.",
            "info",
        )
    return ""
