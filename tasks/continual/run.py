"""Continual learning, once: a new labelled batch -> a data version -> a fine-tuned challenger
-> the continual gate -> the registry (and, if promoted, a rebuilt and validated bento).

Run with ``python -m tasks.continual.run --batch SOURCE`` in the repository (``--help`` says
more); the Prefect flow ``flows/continual.py`` (`continual_learning`) runs this command in a
child process, so the flow itself never imports torch. Not a DVC stage: each batch is its own
data version (`dvc add data/batches/<version>`), and its result changes the registry that the
promote stage keeps.

Steps: the batch is ingested and validated like the training data, split into a train and a
test part, packed as the champion's inputs and checked for leakage (`tasks.continual.batch`);
the champion is fine-tuned on the train part plus a replay sample of the old train split
(`tasks.continual.learning`); both models are scored on the old test split and on the test part;
the challenger is promoted only if it gains on the new data and forgets little of the old
(`tasks.continual.decision`); it is exported and registered with its lineage either way
(`tasks.continual.release`); a promoted challenger is packaged exactly as the package stage
packages a champion (`tasks.packaging.bento`). Everything goes to reports/continual/<version>.json
and a plot beside it.

The same batch again is the same version: the run says it was learnt from and does nothing
(``--force`` fine-tunes and decides again on the stored version). Exit codes as the stages: 0
done, whatever the decision; 1 a data or file problem (a batch with nothing usable, no champion,
not a DVC repository); 2 a mistake in params.yaml or in the arguments.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.continual.batch import (
    Batch,
    OldSplits,
    batches_dir,
    build_batch,
    dvc_add,
    existing_batch,
    ingest_batch,
    require_dvc_repository,
    version_of,
)
from tasks.continual.decision import continual_rules, forgetting_rule, gain_rule
from tasks.continual.learning import (
    challenger_card,
    compare,
    fine_tune,
    finetune_params,
    replay_count,
    replay_sample,
)
from tasks.continual.release import export_challenger, register
from tasks.continual.report import plot_accuracies, report_file, summary_line
from tasks.core.config import Params, load_params_or_exit
from tasks.core.errors import UserError, shown
from tasks.core.io import read_json, write_json
from tasks.core.layout import Layout
from tasks.core.options import parse_options
from tasks.core.runner import (
    print_help,
    stage_help,
    stage_main,
    wants_help,
)
from tasks.data.mirror import resolve_auto
from tasks.data.packed import load_split
from tasks.modeling.artifact import load_model
from tasks.packaging.bento import package
from tasks.registry.gate import decide
from tasks.registry.store import (
    EntryFiles,
    Lineage,
    champion,
    load_registry,
    load_test_set,
    now,
    save_registry,
)

MODULE = "tasks.continual.run"
OPTIONS = {
    "--batch SOURCE": "the labelled batch: a class-folder tree, a CSV manifest (path,label) or an "
    "s3:// prefix (default: continual.batch)",
    "--force": "fine-tune and decide again on a batch that was learnt from before",
    "--result PATH": "also write the report to PATH (what the Prefect flow reads)",
}
READS = [
    "the batch (SOURCE)",
    "models/registry (the champion and its test set)",
    "data/packed (old train and val splits: replay and the leakage check)",
    "params.yaml: continual, data, augment, train, compress, gate, serve, seed",
]
WRITES = [
    "data/batches/<version>/ and data/batches/<version>.dvc (dvc add)",
    "models/registry (the challenger, the decision)",
    "models/bentoml and reports/package.json (when promoted)",
    "reports/continual/<version>.json and .png",
]
USAGE = f"usage: python -m {MODULE} [-h] [--batch SOURCE] [--force] [--result PATH]"


def old_splits(layout: Layout, current: EntryFiles) -> OldSplits:
    return OldSplits(
        train=load_split("train", layout.packed_dir),
        val=load_split("val", layout.packed_dir),
        test=load_test_set(current.test_set),
    )


def learn(
    source: str, params: Params, layout: Layout, force: bool = False
) -> tuple[dict[str, Any], bool]:
    """One round of continual learning on `source`; the report and whether it is new work
    (False: the batch was learnt from before and `force` is off: the earlier report)."""
    require_dvc_repository(layout.root)
    params = resolve_auto(params, layout)  # augment.hflip: auto -> the augment stage's verdict
    current = champion(layout.registry_dir)
    champion_model = load_model(current.folder)
    card = champion_model[1]
    old = old_splits(layout, current)
    staging, manifest = ingest_batch(source, params, layout)
    version = version_of(manifest, params, card)
    batch = existing_batch(layout, version)
    report_path = report_file(layout, version)
    if batch is not None:
        shutil.rmtree(staging)
        if report_path.exists() and not force:
            return read_json(report_path), False
    else:
        batch = build_batch(source, staging, manifest, version, params, card, old, layout)
    dvc_file = dvc_add(layout.root, batch.folder)
    report = fine_tune_and_decide(source, batch, current, champion_model, old, params, layout)
    report["dvc_file"] = str(layout.relative(dvc_file))
    write_json(report_path, report)
    plot_accuracies(report, report_path.with_suffix(".png"))
    if report["bento_error"]:
        raise UserError(report["bento_error"])
    return report, True


def fine_tune_and_decide(
    source: str,
    batch: Batch,
    current: EntryFiles,
    champion_model: tuple[Any, Any],
    old: OldSplits,
    params: Params,
    layout: Layout,
) -> dict[str, Any]:
    """Fine-tune, compare, decide, register (and package when promoted); the report."""
    tuned = finetune_params(params)
    replayed = replay_sample(
        old.train,
        replay_count(len(batch.train[1]), len(old.train[1]), params.continual.replay_fraction),
        params.seed,
    )
    train = tuple(np.concatenate([a, b]) for a, b in zip(batch.train, replayed, strict=True))
    network, _ = load_model(current.folder)  # a second copy: the champion stays as it was
    parent = current.entry.id
    card = challenger_card(champion_model[1], tuned, parent, batch.version)
    network, history = fine_tune(network, card, train, old.val, tuned)
    challenger = (network, card)
    on_old = compare(challenger, champion_model, old.test, params)
    on_new = compare(challenger, champion_model, batch.test, params)
    continual = params.continual
    rules = continual_rules(
        gain_rule(on_new.champion, on_new.challenger, continual.min_gain),
        forgetting_rule(on_old.champion, on_old.challenger, continual.max_forgetting),
        challenger,
        old.test,
        on_old.correct_challenger,
        params,
    )
    promoted, reasons = decide(rules)

    test_set = tuple(np.concatenate([a, b]) for a, b in zip(old.test, batch.test, strict=True))
    folder = batches_dir(layout) / ".challenger"
    if folder.exists():
        shutil.rmtree(folder)
    served, served_reason = export_challenger(network, card, folder, train[0], test_set, tuned)
    correct = np.concatenate([on_old.correct_challenger, on_new.correct_challenger])
    metrics = {
        "accuracy": float(correct.mean()),
        "old_test_accuracy": on_old.challenger,
        "new_test_accuracy": on_new.challenger,
    }
    lineage = Lineage(
        kind="continual",
        batch=batch.version,
        source=source,
        train_images=len(batch.train[1]),
        test_images=len(batch.test[1]),
        replay_images=len(replayed[1]),
    )
    registry = load_registry(layout.registry_dir)
    updated, candidate = register(
        registry,
        folder,
        layout.registry_dir,
        (served, test_set, metrics),
        parent,
        lineage,
        (promoted, reasons),
        now(),
    )
    if updated != registry:
        save_registry(updated, layout.registry_dir)
    shutil.rmtree(folder)

    bento, bento_error = None, None
    if promoted:
        try:
            bento = package(params, layout)
        except UserError as error:  # recorded in the report first, then the run fails
            bento_error = f"promoted {candidate.id}, but its bento failed: {error}"
    return {
        "version": batch.version,
        "source": source,
        "batch": batch.summary,
        "replay_images": len(replayed[1]),
        "fine_tuning": {
            "epochs": continual.epochs,
            "lr": continual.lr,
            "train_images": len(train[1]),
            "history": history,
        },
        "accuracy": {"old_test": on_old.as_dict(), "new_test": on_new.as_dict()},
        "promoted": promoted,
        "decision": "promoted" if promoted else "rejected",
        "reasons": reasons,
        "rules": [rule.model_dump() for rule in rules],
        "champion": parent,
        "challenger": candidate.id,
        "champion_after": updated.champion,
        "served_format": served,
        "served_reason": served_reason,
        "lineage": {"parent": parent, "data_version": batch.version, **lineage.model_dump()},
        "bento": bento["bento"] if bento else None,
        "package": bento,
        "bento_error": bento_error,
    }


def parse_arguments(arguments: Sequence[str]) -> tuple[str | None, bool, Path | None]:
    """--batch, --force and --result (``--flag value`` or ``--flag=value``); exit 2 otherwise."""
    values = parse_options(arguments, USAGE, valued=("--batch", "--result"), switches=("--force",))
    result = values.get("--result")
    batch = values.get("--batch")
    return (
        batch if isinstance(batch, str) else None,
        bool(values.get("--force")),
        Path(result).resolve() if isinstance(result, str) else None,
    )


def main(arguments: Sequence[str] | None = None) -> None:
    arguments = sys.argv[1:] if arguments is None else arguments
    if wants_help(arguments):
        print_help(stage_help(MODULE, __doc__, Layout.discover(), OPTIONS, READS, WRITES))
    batch, force, result = parse_arguments(arguments)

    def work() -> None:
        layout = Layout.discover()
        params = load_params_or_exit(layout.params_file)
        source = batch or params.continual.batch
        if not source:
            print(
                "continual: no labelled batch is configured (--batch or continual.batch); "
                "nothing to learn from"
            )
            return
        report, new = learn(source, params, layout, force)
        if result is not None:
            write_json(result, report)
        if not new:
            print(
                f"continual: batch {report['version']} was learnt from before "
                f"({shown(report_file(layout, report['version']))}); --force fine-tunes again"
            )
        print(summary_line(report))

    stage_main(work, argv=[])


if __name__ == "__main__":
    main()
