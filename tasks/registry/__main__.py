"""Print the model registry: every candidate, its time, accuracy (and the test set it was measured
on), status; `*` marks the champion.

Run with ``python -m tasks.registry`` in a sixfold repository. ``--verify`` also checks every
recorded file against its sha256, the champion pointer and the statuses, says which state the
registry is in (its champion and latest event) and names what an interrupted writer left behind
(garbage, not entries); it exits 1 on a real inconsistency, 0 otherwise. ``--clean`` verifies
and removes those leftovers. Both wait for the registry lock, so a writer's work in progress is
never mistaken for a leftover.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.core.errors import UserError
from tasks.core.layout import Layout
from tasks.core.runner import EX_TEMPFAIL, EX_USER, print_help, usage_error, wants_help
from tasks.registry.lock import RegistryBusy, registry_lock
from tasks.registry.recovery import leftovers, remove_leftovers, state_line
from tasks.registry.store import Registry, check_integrity, load_registry

USAGE = "usage: python -m tasks.registry [-h] [--verify] [--clean]"
FLAGS = ("--verify", "--clean")


def table(registry: Registry) -> str:
    """The registry as a fixed-width table, oldest candidate first."""
    header = (
        f"  {'id':<12}  {'registered (UTC)':<25}  {'accuracy':>8}  {'status':<8}  "
        f"{'served':<9}  accuracy measured on"
    )
    rows = [
        f"{'*' if entry.id == registry.champion else ' '} {entry.id:<12}  {entry.created:<25}  "
        f"{entry.accuracy:>8.4f}  {entry.status:<8}  {entry.served_format:<9}  "
        f"{entry.measured_on}"
        for entry in registry.candidates
    ]
    return "\n".join([header, *rows] if rows else [header, "  (no candidate yet)"])


def verify(registry_dir: Path, clean: bool) -> None:
    """Check the registry (raises RegistryError) and print its state and its leftovers."""
    check_integrity(registry_dir)
    print(f"registry state: {state_line(load_registry(registry_dir))}")
    print("registry verified: every file matches its sha256, one champion")
    if clean and (removed := remove_leftovers(registry_dir)):
        names = ", ".join(path.name for path in removed)
        print(f"registry: removed {len(removed)} leftovers of interrupted runs: {names}")
    if found := leftovers(registry_dir):
        names = ", ".join(path.name for path in found)
        print(
            f"registry: not clean: {len(found)} leftovers of interrupted runs (garbage, not "
            f"entries): {names}; `python -m tasks.registry --clean` removes them"
        )
    else:
        print("registry: clean (nothing left by an interrupted run)")


def main(arguments: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if arguments is None else arguments
    if wants_help(arguments):
        print_help(
            f"{USAGE}\n\n{' '.join((__doc__ or '').split())}\n\nReads models/registry/ of the "
            "repository around the working directory; only --clean writes (it deletes leftovers)."
        )
    if unknown := [argument for argument in arguments if argument not in FLAGS]:
        usage_error(USAGE, f"unknown argument {unknown[0]!r}")
    registry_dir = Layout.discover().registry_dir
    try:
        if not arguments or not registry_dir.is_dir():
            print(table(load_registry(registry_dir)))
            return
        with registry_lock(registry_dir, "python -m tasks.registry " + " ".join(arguments)):
            print(table(load_registry(registry_dir)))
            verify(registry_dir, clean="--clean" in arguments)
    except UserError as error:  # a damaged registry or registry.json: one line, exit 1
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EX_USER) from None
    except RegistryBusy as busy:  # held longer than it waits: one line, try again later
        print(f"error: {busy}", file=sys.stderr)
        raise SystemExit(EX_TEMPFAIL) from None


if __name__ == "__main__":
    main()
