"""Starting Ray: a local Ray on this machine's CPUs, or joining a cluster (`tune.address`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

LOOPBACK_HOSTS = ("127.", "localhost", "[::1]")


def keep_ray_on_loopback(address: str | None) -> None:
    """For a local Ray (or a cluster on 127.0.0.1), make Ray use the loopback address.

    Ray otherwise rewrites 127.0.0.1 to the machine's outward IP (so remote nodes could reach
    it), which fails to reach a head started with --node-ip-address=127.0.0.1 and sends a
    one-machine search over a real interface. Must run before `ray` is imported.
    """
    if address is None or address.split("://")[-1].startswith(LOOPBACK_HOSTS):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def quiet_ray() -> None:
    """Ray's and Optuna's own console output down to errors (`tune.verbose: false`): sixfold
    prints one line per trial instead (tasks/tuning/progress.py)."""
    # the new output engine prints its configuration box and paths even at verbose=0
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in ("ray", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)


def start_ray(address: str | None, root: Path, verbose: bool = False) -> None:
    keep_ray_on_loopback(address)
    if not verbose:
        quiet_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # a crashed trial's traceback goes to its error.txt, not the console: a retried crash needs
    # no traceback, and a search that fails names the file (set it to 1 to see them all)
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    import ray

    runtime_env = {
        "working_dir": str(root),
        # anchored at the root: a bare "data" would also leave out the tasks/data package
        "excludes": ["/.venv", "/.git", "/.dvc", "/data", "/models", "/reports", "**/__pycache__"],
    }
    if address is None:
        ray.init(
            # "local": always a Ray of its own; None would join a `ray start` cluster found
            # on this machine (and fail there: a cluster's CPUs are not ours to set)
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
