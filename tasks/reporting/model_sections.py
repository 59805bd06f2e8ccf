"""The report's sections on the trained model: metrics against the baseline, confusion matrix,
calibration, explanations, compression and the promotion gate.

Each builder reads its reports through a :class:`~tasks.reporting.inputs.SectionInputs` and
returns the section's HTML body; a missing file or key becomes a note, never an exception.
"""

from __future__ import annotations

import re
from typing import Any

from tasks.reporting.html import (
    ABSENT,
    badge,
    code,
    interval,
    is_number,
    items,
    key_values,
    note,
    number,
    paragraph,
    percent,
    points,
    significant,
    table,
    text,
)
from tasks.reporting.inputs import SectionInputs, by_label, dig, mapping, sequence

# the explain stage's default methods: their grids are looked for even without a summary
EXPLAIN_METHODS = ("integrated_gradients", "gradient_shap", "lime")
COMPRESSED_MODELS = ("torch_fp32", "onnx_fp32", "onnx_int8")
# a method name becomes part of a file name: nothing that could leave reports/explain/
SAFE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def interval_name(evaluation: dict[str, Any] | None) -> str:
    """ "95 % interval" from the evaluation's bootstrap settings, else "bootstrap interval"."""
    confidence = dig(evaluation, "test", "bootstrap", "confidence")
    return f"{100 * confidence:g} % interval" if is_number(confidence) else "bootstrap interval"


def metrics(inputs: SectionInputs) -> str:
    """Test accuracy with its interval, macro-F1 and ECE beside the baseline; per-class scores."""
    layout = inputs.layout
    headline = inputs.json(layout.metrics_file)
    evaluation = inputs.json(layout.evaluation_report)
    parts = []
    if headline is not None:
        test, baseline = mapping(headline, "test"), mapping(headline, "baseline")
        for key in ("accuracy", "accuracy_ci", "macro_f1", "ece"):
            if key not in test:
                parts.append(inputs.absent_key(layout.metrics_file, f"test.{key}"))
        accuracy, baseline_accuracy = test.get("accuracy"), baseline.get("accuracy")
        margin = (
            accuracy - baseline_accuracy
            if is_number(accuracy) and is_number(baseline_accuracy)
            else None
        )
        parts.append(
            table(
                ["", "test accuracy", interval_name(evaluation), "macro-F1", "ECE"],
                [
                    [
                        "model",
                        percent(accuracy),
                        interval(test.get("accuracy_ci")),
                        number(test.get("macro_f1")),
                        number(test.get("ece")),
                    ],
                    [
                        f"baseline: {text(baseline.get('name'))}",
                        percent(baseline_accuracy),
                        ABSENT,
                        ABSENT,
                        ABSENT,
                    ],
                    ["model - baseline", points(margin), ABSENT, ABSENT, ABSENT],
                ],
                numeric=[1, 2, 3, 4],
            )
        )
        lower = dig(test, "accuracy_ci")
        if (
            isinstance(lower, list)
            and lower
            and is_number(lower[0])
            and is_number(baseline_accuracy)
        ):
            beats = lower[0] > baseline_accuracy
            parts.append(
                note(
                    f"the interval's lower end {percent(lower[0])} is "
                    f"{'above' if beats else 'not above'} the baseline's "
                    f"{percent(baseline_accuracy)}",
                    "good" if beats else "bad",
                )
            )
        parts.append(
            key_values(
                [
                    (
                        "validation accuracy (exported epoch)",
                        percent(dig(headline, "val", "accuracy")),
                    ),
                    ("train - validation gap", percent(dig(headline, "val", "gap"))),
                    (
                        "search: best validation accuracy",
                        percent(dig(headline, "tune", "best_val_acc")),
                    ),
                    ("search: trials", number(dig(headline, "tune", "trials"))),
                ]
            )
        )
    if evaluation is not None:
        per_class = dig(evaluation, "test", "per_class")
        if isinstance(per_class, dict):
            rows = [
                [text(label)]
                + [number(dig(scores, key)) for key in ("precision", "recall", "f1", "support")]
                for label, scores in by_label(per_class)
            ]
            parts.append(
                f"<h3>Per class, on {number(dig(evaluation, 'test', 'n'))} test images</h3>"
                + table(["class", "precision", "recall", "F1", "support"], rows, [1, 2, 3, 4])
            )
        else:
            parts.append(inputs.absent_key(layout.evaluation_report, "test.per_class"))
    return "".join(parts)


def confusion(inputs: SectionInputs) -> str:
    return paragraph(
        "Rows: the true class, columns: the predicted class, on the test split "
        f"({code('dvc plots show')} draws the same matrix from "
        f"{code('reports/plots/confusion.csv')})."
    ) + inputs.figure(inputs.layout.evaluation_plots / "confusion.png", "confusion matrix")


def calibration(inputs: SectionInputs) -> str:
    """The ECE, the reliability diagram and its bins."""
    path = inputs.layout.evaluation_report
    evaluation = inputs.json(path)
    parts = []
    if evaluation is not None:
        ece = dig(evaluation, "test", "ece")
        parts.append(
            paragraph(
                f"Expected calibration error: <b>{number(ece)}</b> (the confidence-weighted gap "
                "between how sure the model is and how often it is right; 0 is perfect)."
            )
            if ece is not None
            else inputs.absent_key(path, "test.ece")
        )
    parts.append(inputs.figure(inputs.layout.evaluation_plots / "reliability.png", "reliability"))
    bins = dig(evaluation, "test", "reliability")
    if isinstance(bins, list):
        rows = [
            [
                f"{number(dig(b, 'low'), 2)} &ndash; {number(dig(b, 'high'), 2)}",
                number(dig(b, "count")),
                number(dig(b, "confidence")),
                number(dig(b, "accuracy")),
            ]
            for b in bins
            if isinstance(b, dict) and dig(b, "count")
        ]
        parts.append(
            "<h3>Confidence bins (non-empty)</h3>"
            + table(["confidence", "images", "mean confidence", "accuracy"], rows, [1, 2, 3])
        )
    return "".join(parts)


def explanations(inputs: SectionInputs) -> str:
    """The randomization check per method, then each method's attribution grid."""
    folder = inputs.layout.explain_reports
    summary = inputs.json(folder / "summary.json")
    methods = dig(summary, "methods")
    parts = []
    if isinstance(methods, dict):
        passed = dig(summary, "passed")
        parts.append(
            note(
                "randomization check (Adebayo et al. 2018): "
                + ("passed" if passed else "FAILED")
                + ": attributions of the same network with random weights must differ from the "
                "trained network's",
                "good" if passed else "bad",
            )
        )
        rows = [
            [
                code(name),
                number(dig(entry, "sanity", "correlation"), 3),
                number(dig(entry, "sanity", "threshold"), 3),
                badge(
                    "passed" if dig(entry, "sanity", "passed") else "failed",
                    bool(dig(entry, "sanity", "passed")),
                ),
                number(dig(entry, "seconds"), 1),
            ]
            for name, entry in methods.items()
        ]
        parts.append(
            table(["method", "rank correlation", "threshold", "check", "seconds"], rows, [1, 2, 4])
        )
        images = mapping(summary, "images")
        parts.append(
            paragraph(
                f"Images explained: {number(dig(images, 'sampled'))} sampled (a seeded few per "
                f"class) and {number(dig(images, 'misclassified_shown'))} of the "
                f"{number(dig(images, 'misclassified'))} misclassified test images."
            )
        )
        names = [str(name) for name in methods]
    elif summary is not None:
        parts.append(inputs.absent_key(folder / "summary.json", "methods"))
        names = list(EXPLAIN_METHODS)
    else:
        names = list(EXPLAIN_METHODS)
    for name in names:
        if not SAFE_NAME.fullmatch(name):
            parts.append(
                note(f"method name {code(name)} is not a safe file name; not shown", "bad")
            )
            continue
        parts.append(f"<h3>{text(name)}</h3>")
        parts.append(inputs.figure(folder / f"{name}.png", f"{name}: image, attribution, labels"))
    return "".join(parts)


def compression(inputs: SectionInputs) -> str:
    """Accuracy, size and latency of torch fp32, ONNX fp32 and ONNX int8; the served one, why."""
    path = inputs.layout.compress_report
    report = inputs.json(path)
    if report is None:
        return ""
    models = report.get("models")
    if not isinstance(models, dict):
        return inputs.absent_key(path, "models")
    served = report.get("served")
    names = [n for n in COMPRESSED_MODELS if n in models] + sorted(
        n for n in models if n not in COMPRESSED_MODELS
    )
    reference = dig(models, "torch_fp32", "latency_ms_b32")
    rows = []
    for name in names:
        figures = models[name] if isinstance(models[name], dict) else {}
        b32 = figures.get("latency_ms_b32")
        ratio = b32 / reference if is_number(b32) and is_number(reference) and reference else None
        rows.append(
            [
                code(name) + (" " + badge("served", True) if name == served else ""),
                percent(figures.get("accuracy")),
                number(figures.get("size_mb"), 3),
                number(figures.get("latency_ms_b1"), 3),
                number(figures.get("latency_ms_b32"), 3),
                f"{ratio:.2f}x" if ratio is not None else ABSENT,
            ]
        )
    headers = ["model", "test accuracy", "size (MB)", "ms/image, batch 1", "ms/image, batch 32"]
    parts = [
        table(
            [*headers, "batch 32 vs torch fp32"],
            rows,
            numeric=[1, 2, 3, 4, 5],
            highlight=[i for i, name in enumerate(names) if name == served],
        )
    ]
    parts.append(
        paragraph(f"Served: {code(served)} &mdash; {text(report.get('reason'))}")
        if served is not None
        else inputs.absent_key(path, "served")
    )
    extras = [
        ("threads of every measurement", number(report.get("threads"))),
        ("timed runs per model and batch size", number(report.get("latency_repeats"))),
        (
            "ONNX fp32 vs torch, largest probability difference",
            significant(report.get("max_abs_difference"), 3),
        ),
        ("int8 calibration images", number(report.get("calibration_images"))),
    ]
    parts.append(key_values((name, value) for name, value in extras if value != ABSENT))
    return "".join(parts)


def gate(inputs: SectionInputs) -> str:
    """The promotion decision, its reasons (with the verdict of the rule that gave each, when
    the report lists rules), and the candidate beside the champion after the decision and the
    one before it."""
    path = inputs.layout.gate_report
    report = inputs.json(path)
    if report is None:
        return ""
    decision = report.get("decision")
    parts = [paragraph("Decision: " + badge(decision, decision == "promoted"))]
    reasons = report.get("reasons")
    verdicts = {  # each rule's verdict, shown beside the reason it gave
        str(dig(rule, "reason")): bool(dig(rule, "passed"))
        for rule in sequence(report, "rules")
        if isinstance(rule, dict)
    }
    if isinstance(reasons, list):
        parts.append(
            items(_verdict(verdicts.get(str(reason))) + text(reason) for reason in reasons)
        )
    else:
        parts.append(inputs.absent_key(path, "reasons"))
    entries = {"candidate": report.get("candidate"), "champion": report.get("champion")}
    if "previous_champion" in report:  # then `champion` is the one after the decision
        entries = {
            "candidate": entries["candidate"],
            "champion now": entries["champion"],
            "champion before": report.get("previous_champion"),
        }
    columns = {name: entry if isinstance(entry, dict) else {} for name, entry in entries.items()}
    fields = set().union(*columns.values()) - {"id", "accuracy"}
    keys = ["id", "accuracy", *sorted(fields)]
    rows = [[text(key), *(_value(entry.get(key)) for entry in columns.values())] for key in keys]
    parts.append(table(["", *columns], rows))
    if not any(columns[name] for name in list(columns)[1:]):
        parts.append(paragraph("No champion: the first model that meets the gate becomes it."))
    return "".join(parts)


def _verdict(passed: bool | None) -> str:
    return "" if passed is None else badge("passed" if passed else "failed", passed) + " "


def _value(value: Any) -> str:
    """A scalar as a number or text; a nested value as compact, escaped JSON-like text."""
    if isinstance(value, dict | list):
        return text(value)
    return number(value)
