"""What a killed registry writer leaves behind, and which state the registry is in.

`registry.json` is the registry's one commit point (`tasks.registry.store` says how a writer
gets there): whatever a writer killed before that rename left in `models/registry/` is garbage
that no reader looks at. :func:`leftovers` names it, :func:`remove_leftovers` deletes it (under
the registry lock, where nothing is in progress), :func:`state_line` says which state the
registry is in. ``python -m tasks.registry --verify`` and ``--clean`` use them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks.core.io import TEMPORARY_SUFFIX
from tasks.registry.store import PARTIAL_SUFFIX, Registry, load_registry


def leftovers(registry_dir: Path) -> list[Path]:
    """What interrupted writers left in the registry folder: hidden ``.partial`` folders and
    ``.tmp`` files, and candidate folders that registry.json does not list (copied, but killed
    before registry.json was saved). Garbage: no reader looks at them."""
    if not registry_dir.is_dir():
        return []
    listed = {entry.id for entry in load_registry(registry_dir).candidates}
    found = []
    for path in sorted(registry_dir.iterdir()):
        if path.name.startswith("."):
            if path.name.endswith((PARTIAL_SUFFIX, TEMPORARY_SUFFIX)):
                found.append(path)
        elif path.is_dir() and path.name not in listed:
            found.append(path)
    return found


def remove_leftovers(registry_dir: Path) -> list[Path]:
    """Delete :func:`leftovers`; what was removed. Hold the registry lock: a writer's folder
    in progress looks like a leftover."""
    found = leftovers(registry_dir)
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return found


def state_line(registry: Registry) -> str:
    """Which state the registry is in: its champion, its size and its latest event."""
    last = registry.events[-1] if registry.events else None
    latest = f"; last event: {last.kind} {last.candidate} at {last.time}" if last else ""
    return (
        f"champion {registry.champion or 'none'}, {len(registry.candidates)} candidates, "
        f"{len(registry.events)} events{latest}"
    )
