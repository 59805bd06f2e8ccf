"""tune: search hyperparameters with Ray Tune (Optuna TPE + ASHA) before the final training.

Run on its own with ``python -m tasks.tune`` (after augment).

The search space is `tune.space` in params.yaml (any train.*, model.* or augment.* key). Every
trial trains with Lightning on the packed data and reports validation metrics after each epoch
through Ray's Lightning callback (`TuneReportCheckpointCallback`), with a checkpoint, so ASHA can
stop weak trials early and a retried trial restarts from its last epoch. A trial that crashes is
retried (`tune.max_failures`). An interrupted search (Ctrl-C, a killed job) resumes on the next
run with `Tuner.restore`. With `train.cv_folds` > 1 a trial's score is its mean over the folds.

`tune.address`: null starts a local Ray with this machine's CPUs; "auto" or "ray://host:port"
joins an existing cluster (the code travels to the workers as Ray's runtime `working_dir`).

Outputs: models/tune/best_params.yaml (read by train), reports/tune/trials.csv, plots of the
metric per trial and of the best-so-far, reports/tune/summary.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from tasks.cli import UserError, stage_main
from tasks.config import Params, SearchDimension, load_params_or_exit, with_overrides
from tasks.datasets import AUGMENTED_DIR, PACKED_DIR, load_split, require
from tasks.io import read_json, write_json

TUNE_DIR = Path("models/tune")
BEST_PARAMS = TUNE_DIR / "best_params.yaml"
SEARCH_DIR = TUNE_DIR / "search"  # Ray's experiment storage; kept across runs to resume
REPORT_DIR = Path("reports/tune")
EXPERIMENT = "sixfold-tune"
FAIL_ONCE_ENV = "SIXFOLD_TUNE_FAIL_ONCE"  # fault injection for tests: a marker file path


# --------------------------------------------------------------------------- pieces


def search_space(dimensions: dict[str, SearchDimension]) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for key, dim in dimensions.items():
        if dim.type == "loguniform":
            space[key] = tune.loguniform(dim.low, dim.high)
        elif dim.type == "uniform":
            space[key] = tune.uniform(dim.low, dim.high)
        elif dim.type == "int":
            space[key] = tune.randint(int(dim.low), int(dim.high) + 1)
        else:
            space[key] = tune.choice(list(dim.values))
    return space


def trial_params(base: dict[str, Any], config: dict[str, Any]) -> Params:
    """The params a trial trains with: the base params, the trial's values, tune's budget."""
    params = with_overrides(Params.model_validate(base), config)
    tune = params.tune
    gpu = tune.gpus_per_trial > 0
    return with_overrides(
        params,
        {
            "train.max_epochs": tune.max_epochs,
            "train.patience": tune.max_epochs + 1,  # ASHA decides when a trial stops
            "train.accelerator": "gpu" if gpu else "cpu",
            "train.devices": 1,
            "train.strategy": "auto",
            "train.num_nodes": 1,
            "train.finetune_epochs": min(params.train.finetune_epochs, tune.max_epochs - 1),
        },
    )


def run_trial(config: dict[str, Any], base: dict[str, Any], arrays: dict, meta: dict) -> None:
    """Ray Tune trainable: one trial (or, with CV, its folds), reporting every epoch."""
    import torch
    from ray import tune
    from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

    from tasks.train import cross_validate, fit_once

    torch.set_num_threads(max(1, int(base["tune"]["cpus_per_trial"])))
    params = trial_params(base, config)
    context = tune.get_context()
    attempts_file = Path(context.get_trial_dir()) / "attempts.txt"
    attempt = int(attempts_file.read_text()) + 1 if attempts_file.exists() else 1
    attempts_file.write_text(str(attempt))

    marker = os.environ.get(FAIL_ONCE_ENV)
    if marker and not os.path.exists(marker):
        Path(marker).write_text(context.get_trial_id())
        raise RuntimeError(f"injected failure ({FAIL_ONCE_ENV}) in trial {context.get_trial_id()}")

    if params.train.cv_folds > 1:
        summary = cross_validate(params, arrays, meta, arrays["folds"])
        tune.report(
            {**{k: v for k, v in summary["mean"].items() if v is not None}, "attempt": attempt}
        )
        return

    class Report(TuneReportCheckpointCallback):
        """Reports each epoch the best val_acc / val_loss so far (a trial is as good as its best
        epoch, which is the one train exports) beside the epoch's own values; the running best
        is less noisy for ASHA's early cuts and is saved in the trial's checkpoint."""

        best: dict[str, float] = {}  # noqa: RUF012 (replaced per instance in load/first use)

        def _get_report_dict(self, trainer: Any, module: Any) -> dict[str, float] | None:
            found = super()._get_report_dict(trainer, module)
            if not found:
                return None
            best = dict(self.best)
            best["val_acc"] = max(best.get("val_acc", -1.0), found["val_acc"])
            best["val_loss"] = min(best.get("val_loss", float("inf")), found["val_loss"])
            self.best = best
            epoch_values = {f"epoch_{k}": v for k, v in found.items()}
            return {**best, **epoch_values, "attempt": attempt, "epoch": trainer.current_epoch}

        def state_dict(self) -> dict[str, Any]:
            return {"best": dict(self.best)}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.best = dict(state_dict.get("best", {}))

    callback = Report(
        metrics={"val_acc": "val_acc", "val_loss": "val_loss"},
        filename="trial.ckpt",
        on="validation_end",
    )
    checkpoint = tune.get_checkpoint()
    ckpt_path = None
    if checkpoint is not None:
        ckpt_path = os.path.join(checkpoint.to_directory(), "trial.ckpt")
    fit_once(params, arrays, meta, extra_callbacks=[callback], ckpt_path=ckpt_path)


def make_searcher(kind: str, num_samples: int, max_concurrent: int, seed: int) -> Any:
    """Optuna's TPE (with a short random start, so small budgets still exploit) or random search."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if kind == "random":
        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    import optuna
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.utils.util import unflatten_dict

    startup = min(10, max(2, num_samples // 3))  # Optuna's default of 10 is most of a small search
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)

    class UniqueOptunaSearch(OptunaSearch):
        """TPE without repeats.

        Once TPE exploits, it often suggests a configuration it has already tried (always likely
        on `choice` and `int` spaces). Training it again costs a whole trial and, under ASHA, a
        repeat of the best trial ties it at each rung and is promoted to the end. A repeat is told
        the earlier trial's result (pruned while that one still runs) and TPE is asked again.
        """

        redraws = 50  # then a repeat is trained after all (a space with nothing new left)

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._seen_configs: dict[str, Any] = {}  # config -> its result (None: not yet known)

        @staticmethod
        def _key(config: dict) -> str:
            return json.dumps(config, sort_keys=True, default=str)

        def suggest(self, trial_id: str) -> dict | None:
            config = super().suggest(trial_id)
            for _ in range(self.redraws):
                if not isinstance(config, dict) or self._key(config) not in self._seen_configs:
                    break
                earlier = self._seen_configs[self._key(config)]
                repeat = self._ot_trials.pop(trial_id)
                if earlier is None:
                    self._ot_study.tell(repeat, state=optuna.trial.TrialState.PRUNED)
                else:
                    self._ot_study.tell(repeat, earlier)
                config = super().suggest(trial_id)
            if isinstance(config, dict):
                self._seen_configs.setdefault(self._key(config), None)
            return config

        def on_trial_complete(
            self, trial_id: str, result: dict | None = None, error: bool = False
        ) -> None:
            value = (result or {}).get(self.metric)
            trial = self._ot_trials.get(trial_id)
            if value is not None and trial is not None:
                self._seen_configs[self._key(unflatten_dict(trial.params))] = value
            super().on_trial_complete(trial_id, result, error)

    return ConcurrencyLimiter(UniqueOptunaSearch(sampler=sampler), max_concurrent=max_concurrent)


def fingerprint(params: Params, packed_dir: Path, augmented_dir: Path) -> str:
    """What an interrupted search must match to be resumed: settings, base params and data."""
    digest = hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode())
    for folder in (packed_dir, augmented_dir):
        for path in sorted(folder.glob("*.npy")) if folder.exists() else []:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


def load_tuning_arrays(packed_dir: Path, augmented_dir: Path, cv_folds: int) -> dict:
    arrays = {name: load_split(name, packed_dir) for name in ("train", "val")}
    if (augmented_dir / "train_x.npy").exists():
        arrays["train"] = load_split("train", augmented_dir)
    if cv_folds > 1:
        require(packed_dir / "folds.npy")
        arrays["folds"] = np.load(packed_dir / "folds.npy")
    return arrays


LOOPBACK_HOSTS = ("127.", "localhost", "[::1]")


def keep_ray_on_loopback(address: str | None) -> None:
    """For a local Ray (or a cluster on 127.0.0.1), make Ray use the loopback address.

    Ray otherwise rewrites 127.0.0.1 to the machine's outward IP (so remote nodes could reach
    it), which fails to reach a head started with --node-ip-address=127.0.0.1 and sends a
    one-machine search over a real interface. Must run before `ray` is imported.
    """
    if address is None or address.split("://")[-1].startswith(LOOPBACK_HOSTS):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def start_ray(address: str | None, root: Path) -> None:
    keep_ray_on_loopback(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    runtime_env = {
        "working_dir": str(root),
        "excludes": [".venv", ".git", ".dvc", "data", "models", "reports", "**/__pycache__"],
        "env_vars": {k: v for k, v in os.environ.items() if k == FAIL_ONCE_ENV},
    }
    if address is None:
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)


# --------------------------------------------------------------------------- reports


def trials_table(results: Any, metric: str, mode: str) -> pd.DataFrame:
    rows = []
    for result in results:
        history = result.metrics_dataframe
        has_history = history is not None and metric in getattr(history, "columns", [])
        values = history[metric].dropna() if has_history else pd.Series(dtype=float)
        best = (values.max() if mode == "max" else values.min()) if len(values) else np.nan
        attempts = int(history["attempt"].max()) if has_history and "attempt" in history else 1
        row = {f"config/{k}": v for k, v in (result.config or {}).items()}
        row |= {
            "trial_id": (result.metrics or {}).get("trial_id", ""),
            f"best_{metric}": best,
            f"last_{metric}": values.iloc[-1] if len(values) else np.nan,
            "epochs_run": len(values),
            "status": "error" if result.error else "finished",
            "retries": max(attempts - 1, 0),
            "time_s": float((result.metrics or {}).get("time_total_s", np.nan)),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def plot_trials(results: Any, table: pd.DataFrame, metric: str, mode: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for result in results:
        history = result.metrics_dataframe
        if history is not None and metric in getattr(history, "columns", []):
            axis.plot(range(1, len(history) + 1), history[metric], marker=".", alpha=0.8)
    axis.set(title=f"{metric} per trial (ASHA stops the weak ones)", xlabel="epoch", ylabel=metric)
    figure.tight_layout()
    figure.savefig(REPORT_DIR / "trials.png", dpi=100)
    plt.close(figure)

    ordered = table.dropna(subset=["time_s"]).sort_values("time_s")
    best_column = f"best_{metric}"
    running = (
        ordered[best_column].cummax() if mode == "max" else ordered[best_column].cummin()
    ).to_numpy()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.step(range(1, len(running) + 1), running, where="post")
    axis.set(title=f"best {metric} so far", xlabel="trials finished", ylabel=metric)
    figure.tight_layout()
    figure.savefig(REPORT_DIR / "best_so_far.png", dpi=100)
    plt.close(figure)


def write_best(values: dict[str, Any], source: str) -> None:
    TUNE_DIR.mkdir(parents=True, exist_ok=True)
    clean = {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
    header = f"# written by tasks/tune.py ({source}); train applies these over params.yaml\n"
    BEST_PARAMS.write_text(header + yaml.safe_dump(clean, sort_keys=True))


def read_best_params(path: Path = BEST_PARAMS) -> dict[str, Any]:
    """The tuned values ({"train.lr": ...}) or {} when the file does not exist."""
    if not path.exists():
        return {}
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        problem = str(error).replace("\n", " ")
        raise UserError(f"{path}: not valid YAML ({problem}); re-run the tune stage") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: must map settings to values, got {type(values).__name__}")
    return values


# --------------------------------------------------------------------------- the stage


def tune_search(
    params: Params,
    packed_dir: Path = PACKED_DIR,
    augmented_dir: Path = AUGMENTED_DIR,
    root: Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) the search; write the reports and best_params.yaml. Returns the summary."""
    settings = params.tune
    dimensions = settings.flat_space()
    if not settings.enabled or not dimensions:
        current = {key: _current_value(params, key) for key in dimensions}
        write_best(current, "tune.enabled is false: the params.yaml values")
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        (root or Path.cwd()).joinpath(SEARCH_DIR).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(columns=["trial_id"]).to_csv(REPORT_DIR / "trials.csv", index=False)
        plot_trials(
            [],
            pd.DataFrame(columns=["time_s", f"best_{settings.metric}"]),
            settings.metric,
            settings.mode,
        )
        summary = {"enabled": False, "best_params": current}
        write_json(REPORT_DIR / "summary.json", summary)
        return summary

    keep_ray_on_loopback(settings.address)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    root = (root or Path.cwd()).resolve()
    require(packed_dir / "meta.json")
    meta = read_json(packed_dir / "meta.json")
    arrays = load_tuning_arrays(packed_dir, augmented_dir, params.train.cv_folds)
    storage = (root / SEARCH_DIR).resolve()
    experiment = storage / EXPERIMENT
    state_file = storage / "state.json"
    key = fingerprint(params, packed_dir, augmented_dir)
    state = read_json(state_file) if state_file.exists() else {}
    resume = (
        state.get("fingerprint") == key
        and not state.get("complete")
        and tune.Tuner.can_restore(str(experiment))
    )
    if not resume:
        shutil.rmtree(storage, ignore_errors=True)
        storage.mkdir(parents=True)
        write_json(state_file, {"fingerprint": key, "complete": False})

    base = params.model_dump(mode="json")
    pretrained = params.model.pretrained
    if pretrained and "://" not in pretrained and not os.path.isabs(pretrained):
        # trials run in their own folders (and perhaps on other nodes of a shared filesystem)
        base["model"]["pretrained"] = str((root / pretrained).resolve())
    if pretrained:  # weights that are missing or do not fit stop here, not in every trial
        from tasks.train import make_network

        make_network(Params.model_validate(base), meta)
    start_ray(settings.address, root)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, arrays=arrays, meta=meta),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
    )
    if resume:
        print(f"tune: resuming the interrupted search in {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        searcher = make_searcher(
            settings.search, settings.num_samples, settings.max_concurrent, params.seed
        )
        scheduler = (
            ASHAScheduler(
                max_t=settings.max_epochs,
                grace_period=settings.grace_period,
                reduction_factor=settings.reduction_factor,
            )
            if settings.scheduler == "asha" and params.train.cv_folds <= 1
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(dimensions),
            tune_config=tune.TuneConfig(
                metric=settings.metric,
                mode=settings.mode,
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=settings.num_samples,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=str(storage),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=1,
            ),
        )
    results = tuner.fit()
    finished = sum(1 for r in results if r.error is None and r.metrics)
    unfinished = any(r.metrics is None and r.error is None for r in results)
    if len(results) < settings.num_samples or unfinished:
        raise SystemExit(
            f"tune: search interrupted ({finished}/{settings.num_samples} trials finished); "
            "run again to resume it"
        )
    if finished == 0:
        first_error = next((str(r.error) for r in results if r.error is not None), "")
        last_line = (first_error.strip().splitlines() or ["no metrics reported"])[-1]
        raise UserError(
            f"tune: every trial failed; the first error: {last_line} (trial logs under "
            f"{experiment})"
        )
    best = results.get_best_result(metric=settings.metric, mode=settings.mode, scope="all")
    table = trials_table(results, settings.metric, settings.mode)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    table.to_csv(REPORT_DIR / "trials.csv", index=False, lineterminator="\n")
    plot_trials(results, table, settings.metric, settings.mode)
    best_values = {k: best.config[k] for k in dimensions}
    write_best(best_values, f"best of {len(results)} trials by {settings.metric}")
    best_history = best.metrics_dataframe
    summary = {
        "enabled": True,
        "trials": len(results),
        "errored_trials": int((table["status"] == "error").sum()),
        "retried_trials": int((table["retries"] > 0).sum()),
        "epochs_run": int(table["epochs_run"].sum()),
        "best_params": best_values,
        f"best_{settings.metric}": float(
            best_history[settings.metric].max()
            if settings.mode == "max"
            else best_history[settings.metric].min()
        ),
        "resumed": bool(resume),
    }
    write_json(REPORT_DIR / "summary.json", summary)
    write_json(state_file, {"fingerprint": key, "complete": True})
    return summary


def _current_value(params: Params, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(params, section), name)


def main() -> None:
    params = load_params_or_exit()
    summary = tune_search(params)
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    if not summary["enabled"]:
        print(f"tune: disabled; {BEST_PARAMS} holds the params.yaml values")
        return
    metric = params.tune.metric
    print(
        f"tune: {summary['trials']} trials, {summary['epochs_run']} epochs in all; best "
        f"{metric} {summary[f'best_{metric}']:.4f} with {summary['best_params']} -> {BEST_PARAMS}",
        file=sys.stdout,
    )


if __name__ == "__main__":
    stage_main(main)
