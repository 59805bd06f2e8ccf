"""ingest: copy every file of `data.source` into `data/raw/` and list it in its manifest.csv.

Run on its own with ``python -m tasks.ingest``; DVC runs it as the first stage.

`data.source` may be:

- ``sklearn:digits``: scikit-learn's bundled digits, written out as PNGs in class folders and
  then read exactly as a user's folder would be;
- a folder in class-folder layout, ``<root>/<label>/<file>``, local or ``s3://bucket/prefix``;
- a CSV manifest with columns ``path,label`` (paths relative to the CSV's folder), local or S3.

Nothing is judged here except what must be judged before a file is opened: a manifest path that
is absolute, climbs out with ``..`` or resolves (symlinks included) outside the source root is
recorded with status ``unsafe_path`` and never opened; a listed file that does not exist is
recorded with status ``missing``. The validate stage turns both into quarantine entries, so every
input ends up accepted or quarantined with a reason.

In a folder source, hidden names (``.DS_Store``, ``.git/...``), symlinks to folders inside the
root and FIFOs or sockets are not data: they are never opened, and each is listed with its
reason in ``data/raw/ignored.csv`` (columns path, reason, detail), which validate counts.
"""

from __future__ import annotations

import pandas as pd

from tasks.core.config import load_params_or_exit
from tasks.core.layout import Layout
from tasks.core.runner import stage_main
from tasks.data.ingestion import MANIFEST_COLUMNS, ingest
from tasks.data.sources import IGNORED_FILE, count_ignored, describe_ignored

# the copying lives in tasks.data.ingestion (continual learning ingests a batch with it); both
# names stay importable from the stage
__all__ = ["MANIFEST_COLUMNS", "ingest", "main"]


def main() -> None:
    layout = Layout.discover()
    params = load_params_or_exit(layout.params_file)
    manifest = ingest(
        params.data.source,
        dict(params.data.storage_options),
        out_dir=layout.raw_dir,
        group_column=params.data.group_column,
    )
    statuses = manifest.loc[manifest["status"] != "ok", "status"].value_counts().sort_index()
    flagged = int(statuses.sum())
    why = ": " + ", ".join(f"{status}={n}" for status, n in statuses.items()) if flagged else ""
    ignored = pd.read_csv(layout.raw_dir / IGNORED_FILE, dtype=str, keep_default_na=False)
    not_data = f", {describe_ignored(count_ignored(ignored['reason']))}" if len(ignored) else ""
    print(
        f"ingest: {len(manifest)} files from {params.data.source} -> "
        f"{layout.relative(layout.raw_manifest)} "
        f"({len(manifest) - flagged} copied, {flagged} flagged for quarantine{why}{not_data})"
    )


if __name__ == "__main__":
    stage_main(main)
