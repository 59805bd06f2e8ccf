"""promote: judge the trained model against the champion and record it in the model registry.

Run on its own with ``python -m tasks.promote`` (after evaluate and compress).

The exported model (`models/`) is the candidate, named by a content hash of its weights and card.
The gate (`tasks.registry.gate`: test accuracy, the behavioural checks, no regression against
the champion on the champion's own test set) decides whether it becomes the champion; the
decision and its reasons go to `reports/gate.json`, the candidate and its files to
`models/registry/` (kept across runs: `persist: true` in dvc.yaml). A rejected candidate is a
result, not a failure: the stage exits 0. A candidate that is already the champion changes
nothing. A candidate judged before (rejected, or a retired champion) is judged again: the params,
the data or the champion may have changed since; the registry records the new decision only
when it differs from the recorded one, so a rerun on the same inputs changes no byte.

The stage holds the registry lock (`tasks.registry.lock`) from reading the champion to saving
the decision: a continual-learning run cannot change the champion in between. Killed at any
moment, it leaves the old registry or the new one (`tasks.registry.store` says how); run it
again, and `python -m tasks.registry --verify` names anything the killed run left behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from tasks.core.config import Params, load_params_or_exit
from tasks.core.contracts import IncompatibleFile
from tasks.core.errors import UserError, require, shown
from tasks.core.io import read_json, write_json
from tasks.core.layout import Layout
from tasks.core.runner import stage_main
from tasks.data.packed import load_split
from tasks.modeling.artifact import ModelCard, load_model
from tasks.registry.gate import (
    EntrySummary,
    GateReport,
    Rule,
    accuracy_rule,
    behaviour_rules,
    correct_predictions,
    decide,
    first_model_rule,
    incomparable,
    regression_rule,
    same_inputs_rule,
    unseen,
)
from tasks.registry.lock import registry_lock
from tasks.registry.store import (
    CARD,
    SERVED_FILES,
    WEIGHTS,
    Baseline,
    Candidate,
    EntryFiles,
    candidate_id,
    champion,
    data_version,
    file_problems,
    load_registry,
    load_test_set,
    now,
    pipeline_test_set,
    record_decision,
    save_registry,
    store_files,
)


@dataclass(frozen=True)
class Reported:
    """What the upstream reports say about the candidate."""

    served_format: str  # reports/compress.json "served"
    test_metrics: dict[str, Any]  # reports/metrics.json "test"
    baseline: Baseline | None


def read_reports(layout: Layout) -> Reported:
    """Check that every input is there and read the two reports the registry records."""
    packed = layout.packed_dir
    require(
        layout.models_dir / WEIGHTS,
        layout.models_dir / CARD,
        layout.onnx_dir,
        layout.compress_report,
        layout.metrics_file,
        packed / "test_x.npy",
        packed / "test_y.npy",
        layout.packed_meta,
    )
    served = read_json(layout.compress_report).get("served")
    if served not in SERVED_FILES:
        raise IncompatibleFile(
            f"{shown(layout.compress_report)}: served is {served!r}, expected one of "
            f"{sorted(SERVED_FILES)}; re-run the compress stage"
        )
    require(layout.onnx_dir / SERVED_FILES[served])
    metrics = read_json(layout.metrics_file)
    test = metrics.get("test")
    if not isinstance(test, dict) or not isinstance(test.get("accuracy"), int | float):
        raise IncompatibleFile(
            f"{shown(layout.metrics_file)}: no test.accuracy; re-run the evaluate stage"
        )
    baseline = metrics.get("baseline")
    return Reported(served, test, Baseline(**baseline) if isinstance(baseline, dict) else None)


def check_metrics_match(recorded: float, correct: np.ndarray, layout: Layout) -> None:
    """The registry records evaluate's metrics: they must be of this model on this test split.

    evaluate rounds its figures to 4 decimals, hence the tolerance; one image of a 10,000-image
    test split (0.0001) still shows.
    """
    if abs(recorded - float(correct.mean())) > 0.5e-4 + 1e-9:
        raise UserError(
            f"{shown(layout.metrics_file)} says test accuracy {recorded:.4f}, but the model in "
            f"{shown(layout.models_dir)} scores {correct.mean():.4f} on the test split: the "
            "metrics are of another model or data; re-run evaluate (`dvc repro evaluate`)"
        )


def against_champion(
    current: EntryFiles | None, network: nn.Module, card: ModelCard, params: Params, layout: Layout
) -> Rule:
    """The no-regression rule, on the champion's test set (the first model has none), without
    the images the candidate trained or was selected on."""
    if current is None:
        return first_model_rule()
    champion_network, champion_card = load_model(current.folder)
    images, labels = load_test_set(current.test_set)
    mismatch = incomparable(card, champion_card, images)
    if mismatch is not None:
        return mismatch
    seen = np.concatenate([load_split(name, layout.packed_dir)[0] for name in ("train", "val")])
    keep = unseen(images, seen)
    images, labels = images[keep], labels[keep]
    return regression_rule(
        correct_predictions(network, card, images, labels),
        correct_predictions(champion_network, champion_card, images, labels),
        current.entry.id,
        params.gate,
        left_out=int((~keep).sum()),
    )


def promote(params: Params, layout: Layout | None = None) -> GateReport:
    """Judge models/ against the registry's champion; update the registry; write gate.json.

    The registry lock is held from reading the champion to saving the decision, so the
    candidate is always judged against the champion it replaces (`tasks.registry.lock`)."""
    layout = layout or Layout.discover()
    reported = read_reports(layout)
    with registry_lock(layout.registry_dir, "promote"):
        return judge_and_record(params, layout, reported)


def judge_and_record(params: Params, layout: Layout, reported: Reported) -> GateReport:
    """The read-decide-write of :func:`promote`; call it holding the registry lock."""
    registry_dir = layout.registry_dir
    registry = load_registry(registry_dir)
    current = champion(registry_dir) if registry.champion else None  # its checksums checked
    identity = candidate_id(layout.models_dir / WEIGHTS, layout.models_dir / CARD)
    if current is not None and current.entry.id == identity:
        summary = EntrySummary.of(current.entry)
        reason = f"already the champion: {identity} is the registry's champion; registry unchanged"
        report = GateReport(
            decision="promoted",
            reasons=[reason, *current.entry.reasons],
            candidate=summary,
            champion=summary,
            previous_champion=summary,
            rules=[Rule(name="already_champion", passed=True, reason=reason)],
        )
        write_json(layout.gate_report, report.model_dump(mode="json"))
        return report

    network, card = load_model(layout.models_dir)
    test = load_split("test", layout.packed_dir)
    correct = correct_predictions(network, card, *test)
    check_metrics_match(float(reported.test_metrics["accuracy"]), correct, layout)
    rules = [
        accuracy_rule(correct, params.gate.min_accuracy),
        *behaviour_rules(
            network, card, test, correct, reported.baseline, params.gate, params.augment
        ),
        against_champion(current, network, card, params, layout),
    ]
    time = now()
    candidate = registry.entry(identity)
    if candidate is None:
        candidate = Candidate(
            id=identity,
            created=time,
            files=store_files(registry_dir, identity, layout.models_dir, layout.onnx_dir, test),
            served_format=reported.served_format,
            served_file=f"onnx/{SERVED_FILES[reported.served_format]}",
            accuracy=float(correct.mean()),
            test_metrics=reported.test_metrics,
            baseline=reported.baseline,
            data_version=data_version(layout.packed_dir),
            test_images=len(correct),
            test_set=pipeline_test_set(data_version(layout.packed_dir)),
            params_hash=card.params_fingerprint,
            parent=registry.champion,
            status="rejected",
            reasons=[],
        )
    rules.append(same_inputs_rule(candidate, current.entry if current else None))
    damaged = file_problems(registry_dir, candidate) if registry.entry(identity) else []
    if damaged:  # judged before and stored then: a champion must be retrievable as recorded
        reason = f"its registry files are damaged ({'; '.join(damaged)}): it cannot be served"
        rules.append(Rule(name="intact_files", passed=False, reason=reason))
    promoted, reasons = decide(rules)
    updated = record_decision(registry, candidate, promoted, reasons, time)
    if updated != registry:
        save_registry(updated, registry_dir)
    report = GateReport(
        decision="promoted" if promoted else "rejected",
        reasons=reasons,
        candidate=EntrySummary.of(updated.entry(identity)),
        champion=EntrySummary.of(updated.champion_entry()),
        previous_champion=EntrySummary.of(current.entry if current else None),
        rules=rules,
    )
    write_json(layout.gate_report, report.model_dump(mode="json"))
    return report


def summary_line(report: GateReport) -> str:
    candidate = report.candidate.id
    if report.rules[0].name == "already_champion":
        return f"promote: {candidate} is already the champion; registry unchanged"
    if report.decision == "rejected":
        return f"promote: rejected {candidate}: {report.reasons[0]}"
    previous = report.previous_champion.id if report.previous_champion else "none"
    return (
        f"promote: promoted {candidate} (test accuracy {report.candidate.accuracy:.4f}; "
        f"previous champion: {previous})"
    )


def main() -> None:
    layout = Layout.discover()
    params = load_params_or_exit(layout.params_file)
    print(summary_line(promote(params, layout)))


if __name__ == "__main__":
    stage_main(main)
