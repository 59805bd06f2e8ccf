"""Print the model registry: every candidate, its time, accuracy and status; `*` marks the champion.

Run with ``python -m tasks.registry`` in a sixfold repository; ``--verify`` also checks every
recorded file against its sha256 and the champion pointer, and exits 1 on any problem.
"""

from __future__ import annotations

import sys

from tasks.core.errors import UserError
from tasks.core.layout import Layout
from tasks.core.runner import EX_USER, print_help, usage_error, wants_help
from tasks.registry.store import Registry, check_integrity, load_registry

USAGE = "usage: python -m tasks.registry [-h] [--verify]"


def table(registry: Registry) -> str:
    """The registry as a fixed-width table, oldest candidate first."""
    header = f"  {'id':<12}  {'registered (UTC)':<25}  {'accuracy':>8}  {'status':<8}  served"
    rows = [
        f"{'*' if entry.id == registry.champion else ' '} {entry.id:<12}  {entry.created:<25}  "
        f"{entry.accuracy:>8.4f}  {entry.status:<8}  {entry.served_format}"
        for entry in registry.candidates
    ]
    return "\n".join([header, *rows] if rows else [header, "  (no candidate yet)"])


def main(arguments: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if arguments is None else arguments
    if wants_help(arguments):
        print_help(
            f"{USAGE}\n\n{' '.join((__doc__ or '').split())}\n\nReads models/registry/ of the "
            "repository around the working directory; writes nothing."
        )
    if unknown := [argument for argument in arguments if argument != "--verify"]:
        usage_error(USAGE, f"unknown argument {unknown[0]!r}")
    registry_dir = Layout.discover().registry_dir
    try:
        print(table(load_registry(registry_dir)))
        if arguments:
            check_integrity(registry_dir)
            print("registry verified: every file matches its sha256")
    except UserError as error:  # a damaged registry or registry.json: one line, exit 1
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EX_USER) from None


if __name__ == "__main__":
    main()
