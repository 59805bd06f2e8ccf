"""package: save the champion as a bento, serve the built bento, and prove it answers as the model.

Run on its own with ``python -m tasks.package`` (after promote); ``--show`` prints the last
run's line without doing anything.

The champion of the model registry is saved into the project's own BentoML store
(`models/bentoml`, BENTOML_HOME; nothing goes to the home folder) as `sixfold-classifier:<id>`,
and the bento is built from `deploy/bentofile.yaml`. Then the BUILT bento is infra-validated
the way it will run: `bentoml serve <bento>` on a free 127.0.0.1 port, and real HTTP requests:

- `serve.golden_images` seeded test images as PNG files, one per request and several per
  request: every served label and probability (within 1e-5) must equal what the champion's
  served ONNX file gives offline on the same bytes, decoded and preprocessed the same way;
- bad requests (undecodable bytes, too many images, a string in the file field, a JSON body, a
  missing field) must each get a 4xx with a JSON error, never a 2xx or a 5xx, and the server
  must still be ready afterwards;
- the p50/p99 latency of the single-image requests is recorded.

The server is stopped whatever happens. `reports/package.json` records the bento, the model,
every check and the latency; then the stage fails (exit 1, one line naming the failed check) if
any check failed. Without a champion (the gate has rejected every model so far) it stops with
one line saying how to get one.
"""

from __future__ import annotations

import sys

from tasks.core.config import load_params_or_exit
from tasks.core.errors import require
from tasks.core.io import read_json
from tasks.core.layout import Layout
from tasks.core.runner import stage_main
from tasks.packaging.bento import current_champion, failure_line, package, summary_line

# the work lives in tasks.packaging.bento (continual learning rebuilds the bento with it); these
# names stay importable from the stage
__all__ = ["current_champion", "failure_line", "main", "package", "summary_line"]


def main() -> None:
    layout = Layout.discover()
    if sys.argv[1:] == ["--show"]:  # the last run's line, computing nothing
        require(layout.package_report)
        print(summary_line(read_json(layout.package_report)))
        return
    params = load_params_or_exit(layout.params_file)
    print(summary_line(package(params, layout)))


if __name__ == "__main__":
    stage_main(
        main,
        options={"--show": "print the last result (reports/package.json); build and serve nothing"},
    )
