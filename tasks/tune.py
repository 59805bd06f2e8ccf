"""tune: search hyperparameters with Ray Tune (Optuna TPE + ASHA) before the final training.

Run on its own with ``python -m tasks.tune`` (after augment).

The search space is `tune.space` in params.yaml (any train.*, model.* or augment.* key). Every
trial trains with Lightning on the packed data and reports validation metrics after each epoch
(`tasks.tuning.trainable`), with a checkpoint, so ASHA can stop weak trials early and a retried
trial restarts from its last epoch. A trial that crashes is retried (`tune.max_failures`); one
that still fails is marked in trials.csv and counted in the stage's last line, and a search whose
every trial fails stops with the first error and the file that holds its traceback. An
interrupted search (Ctrl-C, a killed job) resumes on the next run with `Tuner.restore`. With
`train.cv_folds` > 1 a trial's score is its mean over the folds.

How many trials and how many epochs each: from `tune.time_budget_minutes` and what an epoch of
each capacity the space can pick costs on this data, timed before the trials start
(`tasks.tuning.budget`). Which trial train gets: the one with the best score, or with
`tune.cheaper_within_images` the cheapest of near-equals, and the params.yaml configuration when
it is within `tune.keep_params_within_se` standard errors of the best (`tasks.tuning.selection`;
ASHA never stops that trial early: `tasks.tuning.scheduling`).

`tune.address`: null starts a local Ray with this machine's CPUs; "auto" or "ray://host:port"
joins an existing cluster (the code travels to the workers as Ray's runtime `working_dir`).

Outputs: models/tune/best_params.yaml (read by train), reports/tune/trials.csv (one row per
trial: its values and scores), plots of the metric per trial, of the best-so-far and of each
trial's score against each searched value (dimensions.png), reports/tune/summary.json (with, per
key, the chosen value and the best score each value reached).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.config import Params, TuneSettings, load_params_or_exit
from tasks.core.errors import UserError
from tasks.core.fingerprint import ResumeState, training_fingerprint
from tasks.core.io import write_json
from tasks.core.layout import Layout
from tasks.core.overrides import write_best_params
from tasks.core.runner import stage_main
from tasks.data.mirror import resolve_auto
from tasks.data.packed import PackedMeta, load_arrays
from tasks.tuning.budget import HARD_LIMIT, SearchPlan, epoch_costs, plan_for, trial_capacity
from tasks.tuning.reports import dimension_effects, plot_dimensions, plot_trials, trials_table
from tasks.tuning.runtime import keep_ray_on_loopback, start_ray
from tasks.tuning.searcher import anchor_points, make_searcher
from tasks.tuning.selection import COST_COLUMN, choose_trial
from tasks.tuning.space import current_value, search_space, searchable_value

EXPERIMENT = "sixfold-tune"


class SearchInterrupted(UserError):
    """The search stopped before every trial finished (Ctrl-C, a killed worker)."""


def tune_search(params: Params, layout: Layout | None = None) -> dict[str, Any]:
    """Run (or resume) the search; write the reports and best_params.yaml. Returns the summary.

    Reads and writes inside `layout` (default: the current repository).
    """
    layout = layout or Layout.discover()
    report_dir = layout.tune_reports
    settings = params.tune
    dimensions = settings.flat_space()
    if not settings.enabled or not dimensions:
        current = {key: current_value(params, key) for key in dimensions}
        write_best_params(
            layout.best_params, current, "tune.enabled is false: the params.yaml values"
        )
        report_dir.mkdir(parents=True, exist_ok=True)
        layout.search_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(columns=["trial_id"]).to_csv(report_dir / "trials.csv", index=False)
        empty = pd.DataFrame(columns=["time_s", f"best_{settings.metric}"])
        plot_trials([], empty, settings.metric, settings.mode, report_dir)
        plot_dimensions(empty, {}, settings.metric, settings.mode, report_dir)
        summary = {"enabled": False, "best_params": current}
        write_json(report_dir / "summary.json", summary)
        return summary

    keep_ray_on_loopback(settings.address)
    from ray import tune

    from tasks.tuning.scheduling import anchor_row, make_scheduler  # imports ray: after the above

    root = layout.root
    meta = PackedMeta.load(layout.packed_meta)
    arrays = load_arrays(layout, with_test=False, with_folds=params.train.cv_folds > 1)
    # augment.hflip: auto -> the augment stage's verdict, for the trials and the first anchor
    # (a disabled search passes `auto` on to train, which resolves it the same way)
    params = resolve_auto(params, layout)
    storage = layout.search_dir
    experiment = storage / EXPERIMENT
    state = ResumeState(storage / "state.json")
    key = training_fingerprint(params, layout)
    resume = state.matches_unfinished(key) and tune.Tuner.can_restore(str(experiment))
    if not resume:
        shutil.rmtree(storage, ignore_errors=True)
        storage.mkdir(parents=True)
        state.start(key)

    base = params.model_dump(mode="json")
    pretrained = params.model.pretrained
    if pretrained and "://" not in pretrained and not os.path.isabs(pretrained):
        # trials run in their own folders (and perhaps on other nodes of a shared filesystem)
        base["model"]["pretrained"] = str((root / pretrained).resolve())
    if pretrained:  # weights that are missing or do not fit stop here, not in every trial
        from tasks.modeling.fit import make_network

        make_network(Params.model_validate(base), meta)
    # timed before Ray starts: its start-up would share the cores with the timed steps; a resumed
    # search keeps the plan and costs it started with (Ray restores its trial count)
    saved = storage / "plan.json"
    if resume and saved.exists():
        kept = json.loads(saved.read_text())
        costs, plan = kept["costs"], SearchPlan(**kept["plan"])
        start_ray(settings.address, root, verbose=settings.verbose)
    else:
        costs = epoch_costs(params, meta, arrays, dimensions)
        start_ray(settings.address, root, verbose=settings.verbose)
        import ray

        plan = plan_for(params, arrays, costs, ray.cluster_resources())
        write_json(saved, {"costs": costs, "plan": plan.as_dict()})
    from tasks.tuning.progress import TrialLines
    from tasks.tuning.trainable import run_trial

    print(f"tune: {plan.trials} trials of up to {plan.max_epochs} epochs ({plan.reason})")
    base["tune"]["max_epochs"] = plan.max_epochs  # what each trial trains for (trial_params)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, arrays=arrays, meta=meta),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
    )
    # the search's first trials: the params.yaml values and the strongest augmentation
    anchors = anchor_points({key: searchable_value(params, key) for key in dimensions}, dimensions)
    own = anchors[0] if anchors else None
    if resume:
        print(f"tune: resuming the interrupted search in {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        searcher = make_searcher(
            settings.search, plan.trials, settings.max_concurrent, params.seed, first=anchors
        )
        # ASHA, except that the params.yaml configuration (the first anchor) trains to the end
        scheduler = make_scheduler(settings, plan.max_epochs, own, params.train.cv_folds)
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(dimensions),
            tune_config=tune.TuneConfig(
                metric=settings.metric,
                mode=settings.mode,
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=plan.trials,
                # the hard stop: a wrong estimate of an epoch's cost never costs the user's time
                time_budget_s=(
                    plan.budget_minutes * 60 * HARD_LIMIT if plan.budget_minutes else None
                ),
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=str(storage),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                # Ray's trial tables only when asked: otherwise one line per trial
                verbose=1 if settings.verbose else 0,
                callbacks=[
                    TrialLines(plan.trials, plan.max_epochs, settings.metric, list(dimensions))
                ],
            ),
        )
    started = time.monotonic()
    results = tuner.fit()
    elapsed = time.monotonic() - started
    finished = sum(1 for r in results if r.error is None and r.metrics)
    unfinished = any(r.metrics is None and r.error is None for r in results)
    out_of_time = bool(plan.budget_minutes) and elapsed >= plan.budget_minutes * 60 * HARD_LIMIT
    if (len(results) < plan.trials or unfinished) and not (out_of_time and finished):
        raise SearchInterrupted(
            f"tune: search interrupted ({finished}/{plan.trials} trials finished); "
            "run again to resume it"
        )
    if finished == 0:
        failed = [r for r in results if r.error is not None]
        if not failed:
            raise UserError(
                f"tune: no trial reported {settings.metric} (trials in "
                f"{layout.relative(experiment)})"
            )
        first_error = failed[0].error
        last_line = (str(first_error).strip().splitlines() or [type(first_error).__name__])[-1]
        error_file = Path(failed[0].path or experiment) / "error.txt"
        raise UserError(
            f"tune: every trial failed, each after {_retries(settings.max_failures)}; the first "
            f"error: {last_line} (traceback: "
            f"{layout.relative(error_file if error_file.exists() else experiment)})"
        )
    # trials the hard stop ended before they started have no configuration: not trials run
    ran = [r for r in results if r.config]
    table = trials_table(ran, settings.metric, settings.mode)
    # what each trial's capacity costs per epoch: the selection prefers the cheaper of equals
    table[COST_COLUMN] = [
        round(costs[trial_capacity(r.config or {}, params)], 3) if costs else None for r in ran
    ]
    choice = choose_trial(
        table,
        settings.metric,
        settings.mode,
        len(arrays.val[1]),
        settings.cheaper_within_images,
        params_row=anchor_row([r.config for r in ran], own),
        keep_within_se=settings.keep_params_within_se,
    )
    table["chosen"] = table.index == choice.index
    best = ran[choice.index]
    report_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(report_dir / "trials.csv", index=False, lineterminator="\n")
    plot_trials(ran, table, settings.metric, settings.mode, report_dir)
    plot_dimensions(table, dimensions, settings.metric, settings.mode, report_dir, choice.index)
    best_values = {k: best.config[k] for k in dimensions}
    write_best_params(
        layout.best_params,
        best_values,
        f"{choice.reason}, of {len(ran)} trials by {settings.metric}",
    )
    best_history = best.metrics_dataframe
    summary = {
        "enabled": True,
        "trials": len(ran),
        "errored_trials": int((table["status"] == "error").sum()),
        "retried_trials": int((table["retries"] > 0).sum()),
        "epochs_run": int(table["epochs_run"].sum()),
        "best_params": best_values,
        f"best_{settings.metric}": float(
            best_history[settings.metric].max()
            if settings.mode == "max"
            else best_history[settings.metric].min()
        ),
        "top_" + settings.metric: float(table[f"best_{settings.metric}"].max())
        if settings.mode == "max"
        else float(table[f"best_{settings.metric}"].min()),
        "chosen_by": choice.reason,
        "resumed": bool(resume),
        "minutes": round(elapsed / 60, 2),
        # how the time budget became trials and epochs (tasks/tuning/budget.py)
        "budget": {**plan.as_dict(), "stopped_by_budget": out_of_time},
        # what the search chose per key and what the trials say about it (dimensions.png)
        "dimensions": dimension_effects(
            table, dimensions, settings.metric, settings.mode, choice.index
        ),
    }
    write_json(report_dir / "summary.json", summary)
    state.finish(key)
    return summary


def _retries(count: int) -> str:
    return "1 retry" if count == 1 else f"{count} retries"


def summary_line(summary: dict[str, Any], settings: TuneSettings, layout: Layout) -> str:
    """The stage's last line: the trials (and how many failed for good), epochs, the best."""
    best_params = layout.relative(layout.best_params)
    if not summary["enabled"]:
        return f"tune: disabled; {best_params} holds the params.yaml values"
    trials = f"{summary['trials']} trials"
    if summary["errored_trials"]:
        trials += (
            f" ({summary['errored_trials']} failed after {_retries(settings.max_failures)}: "
            f"see {layout.relative(layout.tune_reports / 'trials.csv')})"
        )
    if (summary.get("budget") or {}).get("stopped_by_budget"):
        minutes = summary["budget"]["budget_minutes"] * HARD_LIMIT
        trials += f" (the search stopped at its hard limit, {minutes:g} min)"
    metric = settings.metric
    return (
        f"tune: {trials}, {summary['epochs_run']} epochs in all; best {metric} "
        f"{summary[f'best_{metric}']:.4f} with {summary['best_params']} -> {best_params}"
    )


def main() -> None:
    layout = Layout.discover()
    params = load_params_or_exit(layout.params_file)
    summary = tune_search(params, layout)
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    print(summary_line(summary, params.tune, layout))


if __name__ == "__main__":
    stage_main(main)
