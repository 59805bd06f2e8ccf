"""Continual learning, once: a new labelled batch -> a data version -> a fine-tuned challenger
-> the promotion gate's rule -> the registry (and, if promoted, a rebuilt and validated bento).

Run with ``python -m tasks.continual.run --batch SOURCE`` in the repository (``--help`` says
more); the Prefect flow ``flows/continual.py`` (`continual_learning`) runs this command in a
child process, so the flow itself never imports torch. Not a DVC stage: each batch is its own
data version (`dvc add data/batches/<version>`), and its result changes the registry that the
promote stage keeps.

Steps: the batch is ingested and validated like the training data, split into a train and a
test part, packed as the champion's inputs and checked for leakage (`tasks.continual.batch`);
the champion is fine-tuned on the train part plus a replay sample of the old train split, from
which every image of a registered test set is left out (`tasks.continual.replay`, counted in the
report) (`tasks.continual.learning`); both models are scored on the old test set and on the test
part; the challenger is promoted only if the promotion gate's one paired rule shows it better on
the new data and not worse by `gate.max_regression` on the old (`tasks.continual.decision`); it is
exported by the compress stage's code and registered with its lineage either way
(`tasks.continual.release`); a promoted challenger is packaged exactly as the package stage
packages a champion (`tasks.packaging.bento`). Everything goes to reports/continual/<version>.json
and a plot beside it.

The same batch again is the same version: the run says it was learnt from and does nothing
(``--force`` fine-tunes and decides again on the stored version). Exit codes as the stages: 0
done, whatever the decision; 1 a data or file problem (a batch with nothing usable, no champion,
not a DVC repository, a bento that failed); 2 a mistake in params.yaml or in the arguments; 75 the
champion changed while the challenger was fine-tuned (it is recorded as rejected, never promoted
over a model it was not compared with) or the registry stayed locked: run it again. A run whose
report says ``retry`` (that case, or a failed bento) learns again when run again on the same
batch. The registry is written under its lock, in the order `tasks.continual.release` gives.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
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
from tasks.continual.release import export_challenger, release
from tasks.continual.replay import registered_test_images, replay_pool
from tasks.continual.report import plot_accuracies, report_file, summary_line
from tasks.core.config import Params, load_params_or_exit
from tasks.core.errors import UserError, shown
from tasks.core.io import read_json, write_json
from tasks.core.layout import Layout
from tasks.core.options import parse_options
from tasks.core.runner import (
    EX_TEMPFAIL,
    print_help,
    stage_help,
    stage_main,
    wants_help,
)
from tasks.data.mirror import resolve_auto
from tasks.data.packed import load_split
from tasks.modeling.artifact import load_model
from tasks.registry.gate import decide
from tasks.registry.store import (
    EntryFiles,
    Lineage,
    champion,
    load_test_set,
    now,
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
    "models/registry (the champion and its test set; every entry's test set, kept out of replay)",
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
        earlier = read_json(report_path) if report_path.exists() else None
        if earlier is not None and not force and not earlier.get("retry"):
            return earlier, False
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
    # never an image of a registered test set, exact or near (tasks.continual.replay)
    pool = replay_pool(
        old.train,
        registered_test_images(layout.registry_dir),
        params.data.near_duplicate_distance,
    )
    replayed = replay_sample(
        pool.split,
        replay_count(len(batch.train[1]), len(pool.split[1]), params.continual.replay_fraction),
        params.seed,
    )
    train = tuple(np.concatenate([a, b]) for a, b in zip(batch.train, replayed, strict=True))
    network, _ = load_model(current.folder)  # a second copy: the champion stays as it was
    parent = current.entry.id
    card = challenger_card(champion_model[1], tuned, parent, batch.version)
    network, history = fine_tune(network, card, train, old.val, tuned)
    challenger = (network, card)
    on_old = compare(challenger, champion_model, old.test)
    on_new = compare(challenger, champion_model, batch.test)
    continual = params.continual
    rules = continual_rules(
        gain_rule(on_new.correct_challenger, on_new.correct_champion, params.gate),
        forgetting_rule(on_old.correct_challenger, on_old.correct_champion, params.gate),
        challenger,
        old.test,
        on_old.correct_challenger,
        params,
    )
    promoted, reasons = decide(rules)

    test_set = tuple(np.concatenate([a, b]) for a, b in zip(old.test, batch.test, strict=True))
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
    # a unique folder: two runs at once never share one (it is removed whatever happens)
    folder = Path(tempfile.mkdtemp(prefix=".challenger-", dir=batches_dir(layout)))
    try:
        served, served_reason = export_challenger(network, card, folder, train[0], test_set, tuned)
        # under the registry lock: the champion re-read, the bento before the promotion
        released = release(
            folder,
            layout,
            (served, test_set, metrics),
            lineage,
            (parent, promoted, reasons),
            params,
            now(),
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    promoted, reasons, bento = released.promoted, released.reasons, released.package
    return {
        "version": batch.version,
        "source": source,
        "batch": batch.summary,
        "replay_images": len(replayed[1]),
        # old train images left out of the replay pool: in a registered test set
        "replay_excluded": pool.excluded,
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
        "challenger": released.candidate.id,
        "champion_after": released.registry.champion,
        "served_format": served,
        "served_reason": served_reason,
        "lineage": {"parent": parent, "data_version": batch.version, **lineage.model_dump()},
        "bento": bento["bento"] if bento else None,
        "package": bento,
        "bento_error": released.bento_error,
        # why a rerun of this batch learns again rather than returning this report
        "retry": released.retry,
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
        if report.get("retry"):  # the champion changed meanwhile: learn again from the new one
            print(f"error: {report['retry']}", file=sys.stderr)
            raise SystemExit(EX_TEMPFAIL)

    stage_main(work, argv=[])


if __name__ == "__main__":
    main()
