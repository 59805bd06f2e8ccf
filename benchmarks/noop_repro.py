"""noop_repro: how long `dvc repro` takes when nothing changed (median of 5).

Run with ``python -m benchmarks.noop_repro`` (or ``make bench``). Brings the pipeline up to date
first, then compares the no-op `dvc repro` with `dvc version` (DVC's bare start-up cost), so the
ratio shows what checking the pipeline costs beyond starting DVC. Target: seconds < 3.
"""

from __future__ import annotations

from benchmarks.common import Check, command, finish, median_seconds

TARGET_SECONDS = 3.0  # checking an up-to-date pipeline must feel instant next to a stage


def main() -> None:
    command("python", "-m", "tasks.source")()
    command("dvc", "repro")()  # bring everything up to date (no-op when it already is)
    output = command("dvc", "repro")().stdout
    if "Data and pipelines are up to date" not in output:
        raise SystemExit(f"noop_repro: pipeline not up to date after a repro:\n{output}")
    repro_s, repro_runs = median_seconds(command("dvc", "repro"))
    startup_s, _ = median_seconds(command("dvc", "version"))
    finish(
        "noop_repro",
        {
            "seconds": repro_s,
            "runs": repro_runs,
            "dvc_startup_seconds": startup_s,
            "ratio": repro_s / startup_s,
        },
        [Check("seconds", repro_s, "<", TARGET_SECONDS)],
    )


if __name__ == "__main__":
    main()
