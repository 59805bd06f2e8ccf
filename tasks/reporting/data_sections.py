"""The report's sections on the data and the training: validation, split, augmentation, search,
learning curves. Each builder reads its reports through a
:class:`~tasks.reporting.inputs.SectionInputs` and returns the section's HTML body."""

from __future__ import annotations

import math
from typing import Any

from tasks.reporting.html import (
    code,
    is_number,
    key_values,
    note,
    number,
    paragraph,
    percent,
    side_by_side,
    significant,
    table,
    text,
)
from tasks.reporting.inputs import SectionInputs, by_label, dig, label_order, mapping, sequence

SPLIT_NAMES = ("train", "val", "test")


def counts_table(counts: dict[str, Any], reasons_label: str) -> str:
    """A reason -> count mapping as a table, the non-zero reasons first."""
    ordered = sorted(counts.items(), key=lambda pair: (not pair[1], str(pair[0])))
    return table([reasons_label, "count"], ([text(k), number(v)] for k, v in ordered), numeric=[1])


def data_validation(inputs: SectionInputs) -> str:
    """Accepted and quarantined files with reasons, ignored entries, class balance, plots."""
    plots = inputs.layout.data_reports
    figures = "".join(
        inputs.figure(plots / name, caption)
        for name, caption in (
            ("class_balance.png", "accepted images per class"),
            ("image_sizes.png", "image sizes"),
            ("quarantine.png", "quarantined examples"),
        )
    )
    path = inputs.layout.validation_report
    report = inputs.json(path)
    if report is None:
        return figures
    total, accepted, quarantined = (report.get(key) for key in ("total", "accepted", "quarantined"))
    ignored = dig(report, "ignored", "count")
    summary = key_values(
        [
            ("entries in the source", number(total)),
            ("accepted", number(accepted)),
            (
                "quarantined",
                f"{number(quarantined)} ({percent(report.get('quarantined_fraction'))})",
            ),
            ("ignored (not data: hidden files, folders, ...)", number(ignored)),
            ("largest / smallest class", number(dig(report, "class_balance", "max_min_ratio"), 3)),
        ]
    )
    parts = []
    if all(isinstance(value, int) for value in (total, accepted, quarantined)):
        kept = accepted + quarantined == total
        relation = "=" if kept else "&ne;"
        parts.append(
            note(
                f"accepted + quarantined {relation} total ({accepted} + {quarantined} "
                f"{relation} {total}){'' if kept else ': a file was lost track of'}",
                "good" if kept else "bad",
            )
        )
    tables = [summary]
    reasons = report.get("reasons")
    if isinstance(reasons, dict):
        tables.append(counts_table(reasons, "quarantine reason"))
    else:
        parts.append(inputs.absent_key(path, "reasons"))
    ignored_reasons = dig(report, "ignored", "reasons")
    if isinstance(ignored_reasons, dict) and any(ignored_reasons.values()):
        tables.append(counts_table(ignored_reasons, "ignored, because"))
    counts = dig(report, "class_balance", "counts")
    if isinstance(counts, dict):
        rows = ([text(k), number(v)] for k, v in by_label(counts))
        tables.append(table(["class", "accepted images"], rows, [1]))
    parts.append(side_by_side(*tables))
    return "".join(parts) + figures


def split_leakage(inputs: SectionInputs) -> str:
    """Images per class and split, groups kept whole, near-duplicates across splits."""
    path = inputs.layout.split_report
    report = inputs.json(path)
    if report is None:
        return ""
    parts, tables = [], []
    counts = report.get("counts")
    if isinstance(counts, dict):
        splits = [name for name in SPLIT_NAMES if name in counts] + sorted(
            name for name in counts if name not in SPLIT_NAMES
        )
        labels = {str(label) for name in splits for label in mapping(counts, name)}
        rows = []
        for label in sorted(labels, key=label_order):
            row = [dig(counts, name, label) for name in splits]
            rows.append([text(label), *map(number, row), number(_total(row))])
        sums = [_total(mapping(counts, name).values()) for name in splits]
        rows.append(["<b>all</b>", *map(number, sums), number(_total(sums))])
        numeric = range(1, len(splits) + 2)
        tables.append(table(["class", *splits, "all splits"], rows, numeric))
    else:
        parts.append(inputs.absent_key(path, "counts"))
    leaks = report.get("near_duplicate_pairs_across_splits")
    groups = report.get("groups") if isinstance(report.get("groups"), dict) else {}
    tables.append(
        key_values(
            [
                (
                    "groups per split (kept whole)",
                    text(", ".join(f"{k}: {v}" for k, v in groups.items())),
                ),
                ("channels packed", text(report.get("channels_reason", report.get("channels")))),
                ("cross-validation folds", number(report.get("cv_folds"))),
                ("near-duplicate hash distance", number(report.get("near_duplicate_distance"))),
                ("near-duplicate pairs across splits", number(leaks)),
            ]
        )
    )
    parts.append(side_by_side(*tables))
    if leaks == 0:
        parts.append(note("no near-duplicate pair crosses splits: no leakage found", "good"))
    elif is_number(leaks):
        examples = sequence(report, "near_duplicate_examples")
        rows = [
            [
                text(dig(e, "a_split")),
                text(dig(e, "a")),
                text(dig(e, "b_split")),
                text(dig(e, "b")),
                number(dig(e, "distance")),
            ]
            for e in examples
            if isinstance(e, dict)
        ]
        shown = f" (the first {len(rows)} shown)" if len(rows) < leaks else ""
        parts.append(
            note(f"{number(leaks)} near-duplicate pair(s) across splits{shown}: leakage", "bad")
        )
        parts.append(table(["split", "image", "split", "near-duplicate", "distance"], rows, [4]))
    return "".join(parts)


def _total(values: Any) -> int | None:
    """The sum of `values` when they are all numbers, else None (shown as a dash)."""
    values = list(values)
    return sum(values) if all(is_number(v) for v in values) else None


def augmentation(inputs: SectionInputs) -> str:
    return paragraph(
        "Training images before and after the augmentation, with the settings of "
        f"{code('augment')} in params.yaml."
    ) + inputs.figure(inputs.layout.augment_preview, "augmentation preview")


def tuning(inputs: SectionInputs) -> str:
    """The search's summary and best values, every trial as a table, its plots."""
    folder = inputs.layout.tune_reports
    summary = inputs.json(inputs.layout.tune_summary)
    if summary is None:
        return ""
    best = summary.get("best_params") if isinstance(summary.get("best_params"), dict) else {}
    best_table = table(["parameter", "value"], ([code(k), significant(v)] for k, v in best.items()))
    if summary.get("enabled") is False:
        return (
            note(
                f"The search is off ({code('tune.enabled')} is false): training used the "
                "params.yaml values below.",
                "good",
            )
            + best_table
        )
    budget = mapping(summary, "budget")
    trials_run = f"{number(summary.get('trials'))}" + (
        f" of {number(budget.get('trials'))} planned" if is_number(budget.get("trials")) else ""
    )
    parts = [
        search_end(inputs, summary),
        key_values(
            [
                ("trials run", trials_run),
                ("plan (from the time budget)", text(budget.get("reason"))),
                (
                    "minutes: run / budget",
                    f"{number(summary.get('minutes'), 2)} / "
                    f"{number(budget.get('budget_minutes'), 2)}",
                ),
                ("chosen trial's validation accuracy", percent(summary.get("best_val_acc"))),
                ("best validation accuracy of any trial", percent(summary.get("top_val_acc"))),
                ("chosen", text(summary.get("chosen_by"))),
                ("epochs run, all trials", number(summary.get("epochs_run"))),
                (
                    "errored / retried trials",
                    f"{number(summary.get('errored_trials'))} / "
                    f"{number(summary.get('retried_trials'))}",
                ),
                ("resumed an interrupted search", number(summary.get("resumed"))),
            ]
        ),
        "<h3>Best values (applied by train)</h3>" + best_table,
    ]
    trials = inputs.csv_rows(folder / "trials.csv")
    if trials is not None:
        header, rows = trials
        scores = [_float(row.get("best_val_acc")) for row in rows]
        top = max(range(len(rows)), key=lambda i: scores[i] if scores[i] is not None else -1.0)
        # the trial the search chose (tasks/tuning/selection.py), else the best score
        top = next((i for i, row in enumerate(rows) if row.get("chosen") == "True"), top)
        columns = [name.removeprefix("config/") for name in header]
        cells = [[_cell(row.get(name)) for name in header] for row in rows]
        numeric = [
            i for i, name in enumerate(header) if any(_float(r.get(name)) is not None for r in rows)
        ]
        parts.append(
            f"<h3>Trials ({trials_run}; the chosen one highlighted)</h3>"
            + table(columns, cells, numeric, highlight=[top] if rows else [])
        )
    parts.append(inputs.figure(folder / "trials.png", "every trial's validation accuracy"))
    parts.append(inputs.figure(folder / "best_so_far.png", "best validation accuracy so far"))
    parts.append(
        inputs.figure(folder / "dimensions.png", "each trial's score against each searched value")
    )
    return "".join(parts)


def search_end(inputs: SectionInputs, summary: dict[str, Any]) -> str:
    """How the search ended, said plainly: all its planned trials, or cut by its hard stop.

    The tune stage plans its trials from `tune.time_budget_minutes` and Ray stops the search at
    a multiple of the budget whatever the plan said (tasks/tuning/budget.py); summary.json
    records that as ``budget.stopped_by_budget``. A search cut short chose among fewer trials
    than planned, which a reader must not mistake for the plan.
    """
    budget = mapping(summary, "budget")
    stopped = budget.get("stopped_by_budget")
    trials, planned = summary.get("trials"), budget.get("trials")
    if not isinstance(stopped, bool):
        return inputs.absent_key(inputs.layout.tune_summary, "budget.stopped_by_budget")
    if stopped:
        ran = (
            f"{number(trials)} of the {number(planned)} planned trials ran"
            if is_number(planned)
            else f"{number(trials)} trials ran"
        )
        return note(
            f"<b>The search hit its hard stop</b>: Ray ended it after "
            f"{number(summary.get('minutes'), 2)} min, at the hard time limit of its "
            f"{number(budget.get('budget_minutes'), 2)} min budget "
            f"({code('tune.time_budget_minutes')}), so {ran}. The chosen trial is the best of "
            "those; a larger budget (or a faster machine) lets the whole plan run.",
            "bad",
        )
    if is_number(trials) and is_number(planned) and trials < planned:
        return note(
            f"{number(trials)} of the {number(planned)} planned trials ran, without a hard stop.",
            "bad",
        )
    planned_all = "all its planned" if trials == planned else "its"
    return note(f"The search ran {planned_all} {number(trials)} trials: no hard stop.", "good")


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _cell(value: str | None) -> str:
    """A CSV value: a number to 4 significant digits, anything else as escaped text."""
    parsed = _float(value)
    if parsed is None or value is None or value.isdigit() or not math.isfinite(parsed):
        return text(value if value not in (None, "") else None)
    return f"{parsed:.4g}"


def learning_curves(inputs: SectionInputs) -> str:
    """The exported epoch's accuracy and loss on train and validation, the gap, the curves."""
    report = inputs.json(inputs.layout.train_report)
    parts = []
    if report is not None:
        gap = report.get("train_val_gap")
        parts.append(
            key_values(
                [
                    (
                        "epochs run / best epoch / exported epoch",
                        " / ".join(
                            number(report.get(k))
                            for k in ("epochs_run", "best_epoch", "exported_epoch")
                        ),
                    ),
                    ("stopped early", number(report.get("stopped_early"))),
                    ("train accuracy (clean train images)", percent(report.get("train_acc"))),
                    (
                        "train accuracy (augmented batches)",
                        percent(report.get("train_acc_augmented")),
                    ),
                    ("validation accuracy", percent(report.get("val_acc"))),
                    ("train - validation gap", percent(gap)),
                    (
                        "train / validation loss",
                        f"{number(report.get('train_loss'))} / {number(report.get('val_loss'))}",
                    ),
                    (
                        "device, processes",
                        f"{text(report.get('device'))}, {number(report.get('world_size'))}",
                    ),
                ]
            )
        )
        if report.get("overfit_warning") is True:
            parts.append(note(f"overfitting: the train - validation gap is {percent(gap)}", "bad"))
        elif report.get("overfit_warning") is False:
            parts.append(note(f"no overfitting warning (gap {percent(gap)})", "good"))
    parts.append(inputs.figure(inputs.layout.curves_plot, "loss and accuracy per epoch"))
    return "".join(parts)
