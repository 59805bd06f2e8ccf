"""Running the data stages in a work folder, and reading what they wrote.

Stages run as their real `main()` entry points in a fresh Python process (cwd = a work folder
holding only params.yaml, PYTHONPATH = the repository): the folder is the repository the stages
discover, so their outputs land under `Layout(work)`. Shared by tests/code/test_split_augment.py
and tests/system/test_split_augment_pipeline.py (the fixtures that use these are in conftest).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tasks.core.layout import Layout
from tests.conftest import REPO_ROOT, merge, run

PER_CLASS = 50  # digits per class in the shared run: 500 images, ~5 s per full pipeline run
ALL_STAGES = ("ingest", "validate", "split", "augment")


def run_stages(
    work: Path, overrides: dict[str, Any], stages: tuple[str, ...] = ALL_STAGES, hash_seed: int = 0
) -> None:
    """Write params.yaml (the repository's, with `overrides`) and run `stages` in one process."""
    params = merge(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), overrides)
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    script = "".join(f"import tasks.{s}; tasks.{s}.main()\n" for s in stages)
    environment = {"PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": str(hash_seed)}
    run([sys.executable, "-c", script], work, env=environment)


def digits_overrides(source: Path, seed: int = 42) -> dict[str, Any]:
    """The digits subset in `source`, `seed`, and 3 cross-validation folds."""
    return {"seed": seed, "data": {"source": str(source)}, "train": {"cv_folds": 3}}


def read_split(work: Path) -> pd.DataFrame:
    return pd.read_csv(Layout(work).split_file, dtype=str, keep_default_na=False)


def output_files(work: Path) -> dict[str, bytes]:
    """Every determinism-relevant output: packed arrays, the split and augmented arrays."""
    layout = Layout(work)
    paths = [
        *sorted(layout.packed_dir.glob("*.npy")),
        layout.split_file,
        *sorted(layout.augmented_dir.glob("*.npy")),
    ]
    return {path.relative_to(layout.root).as_posix(): path.read_bytes() for path in paths}
