"""hpo_efficiency: the search `make run` ships vs a full grid and a random-search control.

Run with ``python -m benchmarks.hpo_efficiency`` (after ``make run``: it reads data/packed).

What is measured is what users get: the searcher, scheduler, grace period, reduction factor,
learning-rate schedule, search space and time budget all come from params.yaml (`tune.*`,
`train.*`); the number of trials and epochs per trial are the tune stage's plan for this data
(`tasks.tuning.budget`, from `tune.time_budget_minutes` and the measured epoch cost), and a
search hands over the trial the tune stage would (`tasks.tuning.selection`). Nothing is set
for the benchmark alone. Every trial is the tune stage's own Ray Tune trainable (Lightning,
online augmentation), one CPU each.

The task is one where hyperparameters matter: a stratified, seeded subsample of the digits'
train split (SUBSAMPLE_PER_CLASS images per class). On the full digits nearly every configuration
scores 99-100 %, so any search looks as good as the grid; with little data a poor learning rate
or too much regularization costs points. `grid_spread` (the grid's best minus its median) shows
that it does (target >= 0.02).

Three sides, all selecting on the validation split only (test images never take part in a
choice; each side's chosen configuration is then retrained and scored on the test split, and that
figure is reported, not used):

- grid: GRID_POINTS values per dimension of `tune.space` (geometric for loguniform, even for
  uniform, every value for choice, spread for int), every combination trained for the plan's
  epochs per trial;
- shipped: `tune.search` (TPE) with `tune.scheduler` (ASHA), the plan's trials, over SEEDS seeds
  (the search's path depends on its seed: medians count);
- random: random search with the same scheduler and trial count, over the same seeds.

Targets: the shipped search's median best validation accuracy within 0.005 of the grid's best,
with at most 0.35 of the grid's epochs (median), and not below the random control's median.
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.common import Check, finish
from tasks.core.config import Params, SearchDimension, load_params, with_overrides
from tasks.core.layout import Layout
from tasks.data.mirror import resolve_auto
from tasks.data.packed import Arrays, PackedMeta, Split, load_split
from tasks.modeling.artifact import predict
from tasks.modeling.fit import fit_once, preprocessing_for
from tasks.tuning.budget import HARD_LIMIT, epoch_costs, plan_for, trial_capacity
from tasks.tuning.runtime import keep_ray_on_loopback, start_ray
from tasks.tuning.selection import COST_COLUMN, choose_trial
from tasks.tuning.space import search_space, searchable_value, trial_params
from tasks.tuning.trainable import run_trial

SUBSAMPLE_PER_CLASS = 20  # 200 training images: few enough that hyperparameters matter
GRID_POINTS = 3  # values per numeric dimension: 72 configurations for the shipped space
SEEDS = 3
TARGET_SPREAD = 0.02
TARGET_GAP = 0.005  # half a point of validation accuracy
TARGET_BUDGET = 0.35


def subsample(split: Split, per_class: int, seed: int) -> Split:
    """`per_class` images of every class, drawn with `seed` (stratified)."""
    images, labels = split
    rng = np.random.default_rng(seed)
    picked = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    )
    picked.sort()
    return images[picked], labels[picked]


def grid_values(dimension: SearchDimension, points: int) -> list[Any]:
    """`points` values spanning one dimension of the search space."""
    if dimension.type == "choice":
        return list(dimension.values or [])
    low, high = float(dimension.low), float(dimension.high)
    if dimension.type == "loguniform":
        return [float(v) for v in np.geomspace(low, high, points)]
    if dimension.type == "int":
        return sorted({round(v) for v in np.linspace(low, high, points)})
    # uniform draws from [low, high): the top of the range is never drawn, so neither is it here
    return [float(v) for v in np.linspace(low, high, points + 1)[:-1] + (high - low) / points / 2]


def scheduler_for(params: Params, anchor: dict[str, Any] | None) -> Any:
    """The tune stage's scheduler from `tune.*` (the params.yaml anchor kept to the end)."""
    from tasks.tuning.scheduling import make_scheduler

    return make_scheduler(params.tune, params.tune.max_epochs, anchor, params.train.cv_folds)


def run_search(
    trainable: Any,
    space: dict,
    searcher: Any,
    scheduler: Any,
    samples: int,
    storage: str,
    name: str,
    costs: dict[str, float],
    params: Params,
    val_images: int,
    time_budget_s: float | None = None,
    anchor: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One Ray Tune search; its best validation accuracy, the trial the tune stage would hand
    to train (its config and score), epochs and trials."""
    import pandas as pd
    from ray import tune

    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_acc",
            mode="max",
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=samples,
            time_budget_s=time_budget_s,
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
    )
    start = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - start
    trials = []
    for result in results:
        if result.error is not None or result.metrics_dataframe is None:
            raise SystemExit(f"hpo_efficiency: a trial of {name} failed: {result.error}")
        history = result.metrics_dataframe
        trials.append(
            {
                "config": {key: result.config[key] for key in space},
                "best_val_acc": float(history["val_acc"].max()),
                "epochs": len(history),
                "val_acc_by_epoch": [round(float(v), 4) for v in history["epoch_val_acc"]],
            }
        )
    table = pd.DataFrame(
        {
            "best_val_acc": [trial["best_val_acc"] for trial in trials],
            COST_COLUMN: [costs[trial_capacity(trial["config"], params)] for trial in trials],
        }
    )
    from tasks.tuning.scheduling import anchor_row

    settings = params.tune
    choice = choose_trial(
        table,
        "val_acc",
        "max",
        val_images,
        settings.cheaper_within_images,
        params_row=anchor_row([trial["config"] for trial in trials], anchor),
        keep_within_se=settings.keep_params_within_se,
    )
    chosen = trials[choice.index]
    return {
        "best": max(trial["best_val_acc"] for trial in trials),
        "chosen_val_acc": chosen["best_val_acc"],
        "chosen": chosen["config"],
        "epochs": sum(trial["epochs"] for trial in trials),
        "seconds": seconds,
        "trials": trials,
    }


def score_on_test(params: Params, config: dict, arrays: Arrays, meta: PackedMeta) -> float:
    """Retrain a chosen configuration as its trial did and score it on the test split."""
    trained = trial_params(params.model_dump(mode="json"), config)
    network, _history = fit_once(trained, arrays, meta)
    test_x, test_y = arrays.test
    predicted = predict(network, preprocessing_for(meta), test_x).argmax(axis=1)
    return float((predicted == test_y).mean())


def main() -> None:
    layout = Layout.discover()
    params = resolve_auto(load_params(layout.params_file), layout)  # augment.hflip: auto
    settings = params.tune
    dimensions = settings.flat_space()
    meta = PackedMeta.load(layout.packed_meta)
    arrays = Arrays(
        train=subsample(load_split("train", layout.packed_dir), SUBSAMPLE_PER_CLASS, params.seed),
        val=load_split("val", layout.packed_dir),
    )
    test_arrays = arrays.with_splits(test=load_split("test", layout.packed_dir))
    keep_ray_on_loopback(None)
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # imports ray: after keep_ray_on_loopback
    from tasks.tuning.searcher import anchor_points, make_searcher

    # the tune stage's plan for this data (timed before Ray starts, as the stage does)
    costs = epoch_costs(params, meta, arrays, dimensions)
    start_ray(None, layout.root)
    import ray

    plan = plan_for(params, arrays, costs, ray.cluster_resources())
    print(f"hpo_efficiency: the plan: {plan.trials} trials of up to {plan.max_epochs} epochs")
    params = with_overrides(
        params, {"tune.max_epochs": plan.max_epochs, "tune.num_samples": plan.trials}
    )
    settings = params.tune
    hard_stop = plan.budget_minutes * 60 * HARD_LIMIT if plan.budget_minutes else None
    val_images = len(arrays.val[1])
    # the tune stage's first trials (random search, the control, ignores them)
    anchors = anchor_points({k: searchable_value(params, k) for k in dimensions}, dimensions)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, base=params.model_dump(mode="json"), arrays=arrays, meta=meta
        ),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
    )
    points = {key: grid_values(dim, GRID_POINTS) for key, dim in dimensions.items()}
    grid_size = math.prod(len(values) for values in points.values())
    with tempfile.TemporaryDirectory() as storage:
        grid = run_search(
            trainable,
            {key: tune.grid_search(values) for key, values in points.items()},
            BasicVariantGenerator(max_concurrent=settings.max_concurrent),
            FIFOScheduler(),
            1,
            storage,
            "grid",
            costs,
            params,
            val_images,
            anchor=anchors[0] if anchors else None,  # the same rule picks the grid's trial
        )
        sides: dict[str, list[dict[str, Any]]] = {"shipped": [], "random": []}
        for seed, (side, kind) in itertools.product(
            range(params.seed, params.seed + SEEDS),
            (("shipped", settings.search), ("random", "random")),
        ):
            searcher = make_searcher(
                kind, settings.num_samples, settings.max_concurrent, seed, first=anchors
            )
            search = run_search(
                trainable,
                search_space(dimensions),
                searcher,
                scheduler_for(params, anchors[0] if anchors else None),
                settings.num_samples,
                storage,
                f"{side}_{seed}",
                costs,
                params,
                val_images,
                hard_stop,
                anchors[0] if anchors else None,
            )
            sides[side].append({"seed": seed, **search})
    import ray

    ray.shutdown()

    grid_best = grid["chosen_val_acc"]  # the grid's pick, by the same rule as the search's
    grid_median = float(np.median([trial["best_val_acc"] for trial in grid["trials"]]))
    median = {
        side: {
            figure: float(np.median([search[figure] for search in searches]))
            for figure in ("chosen_val_acc", "epochs", "seconds")
        }
        for side, searches in sides.items()
    }
    # each side's chosen configuration, scored on test (the median seed's choice for a search)
    test = {"grid": score_on_test(params, grid["chosen"], test_arrays, meta)}
    for side, searches in sides.items():
        middle = sorted(searches, key=lambda search: search["chosen_val_acc"])[len(searches) // 2]
        test[side] = score_on_test(params, middle["chosen"], test_arrays, meta)
    budget_fraction = median["shipped"]["epochs"] / grid["epochs"]
    finish(
        "hpo_efficiency",
        {
            "grid_best": grid_best,
            "grid_median": grid_median,
            "grid_spread": grid_best - grid_median,
            "grid_epochs": grid["epochs"],
            "grid_configurations": grid_size,
            "tuned_best": median["shipped"]["chosen_val_acc"],
            "tuned_epochs": median["shipped"]["epochs"],
            "budget_fraction": budget_fraction,
            "random_best": median["random"]["chosen_val_acc"],
            "random_epochs": median["random"]["epochs"],
            "grid_test_accuracy": test["grid"],
            "tuned_test_accuracy": test["shipped"],
            "random_test_accuracy": test["random"],
            "grid_seconds": grid["seconds"],
            "tuned_seconds": median["shipped"]["seconds"],
            "random_seconds": median["random"]["seconds"],
            "search": settings.search,
            "scheduler": settings.scheduler,
            "grace_period": settings.grace_period,
            "reduction_factor": settings.reduction_factor,
            "num_samples": settings.num_samples,
            "max_epochs": settings.max_epochs,
            "plan": plan.as_dict(),
            "epoch_seconds": costs,
            "schedule": params.train.schedule,
            "train_images": len(arrays.train[1]),
            "seeds": SEEDS,
            "grid_chosen": grid["chosen"],
            "grid_trials": grid["trials"],
            "shipped_searches": sides["shipped"],
            "random_searches": sides["random"],
        },
        [
            Check("grid_spread", grid_best - grid_median, ">=", TARGET_SPREAD),
            Check(
                "tuned_best - grid_best",
                median["shipped"]["chosen_val_acc"] - grid_best,
                ">=",
                -TARGET_GAP,
            ),
            Check("budget_fraction", budget_fraction, "<=", TARGET_BUDGET),
            Check(
                "tuned_best - random_best",
                median["shipped"]["chosen_val_acc"] - median["random"]["chosen_val_acc"],
                ">=",
                0.0,
            ),
        ],
    )


if __name__ == "__main__":
    main()
