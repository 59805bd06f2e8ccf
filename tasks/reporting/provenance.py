"""Which run a page shows: when it was built, from which commit, with which params.yaml.

A page that is mailed or kept as a CI artifact outlives the checkout it came from; without these
three facts a reader cannot tell two pages apart, nor find the code and settings behind one.

- The build time is now, in UTC, unless SOURCE_DATE_EPOCH is set (the reproducible-builds
  convention): then the same reports give the same bytes. The report stage runs last in
  `dvc repro`, so for a page the pipeline built this is when its run ended.
- The commit is git's short hash of HEAD, with "+ uncommitted changes" when a file differs from
  it. Only files that can change what a run computes count: `dvc repro` rewrites dvc.lock and
  the stages' outputs before this stage runs, reports/ (committed beside dvc.lock) holds only
  what runs write, and DVC keeps .gitignore files for its outputs, so those are left out;
  otherwise every page the pipeline builds would say "uncommitted". A folder outside git, a
  repository without a commit or a machine without git gives a page that says so, never a
  failed stage.
- params.yaml's sha256 is what `sha256sum params.yaml` prints (its first 12 hex digits).

None of the three is a DVC dependency: a commit that changes no stage's input does not re-run
this stage, so the page names the commit and params.yaml it was built with.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.core.layout import Layout

SHORT_HASH = 12  # hex digits shown of a sha256
GIT_TIMEOUT_S = 20.0  # a git that hangs (a network file system) must not hang the stage
LOCK_FILE = "dvc.lock"  # dvc repro rewrites it after every stage: never an uncommitted change
# git status must not take the index lock: another git command (an engineer's commit) may hold it
GIT_ENVIRONMENT = {"GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}


@dataclass(frozen=True)
class Commit:
    """The git commit of the repository: its short hash, the uncommitted files that can change
    a run (repository-relative), or why the commit is unknown (`problem`)."""

    hash: str | None
    changed: tuple[str, ...] = ()
    problem: str | None = None


@dataclass(frozen=True)
class Provenance:
    """When the page was built, from which commit, and the sha256 of its params.yaml."""

    built: datetime
    commit: Commit
    params_sha256: str | None


def build_time(environment: dict[str, str] | None = None) -> datetime:
    """Now in UTC, or SOURCE_DATE_EPOCH (seconds since 1970) when it holds a whole number."""
    epoch = (os.environ if environment is None else environment).get("SOURCE_DATE_EPOCH", "")
    if epoch.strip().isdigit():
        return datetime.fromtimestamp(int(epoch), UTC)
    return datetime.now(UTC).replace(microsecond=0)


def file_sha256(path: Path) -> str | None:
    """The sha256 of `path`'s bytes (what `sha256sum` prints), or None when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _git(root: Path, *arguments: str) -> tuple[str | None, str]:
    """git's stdout for `arguments` run in `root` (None on failure) and its first error line."""
    try:
        result = subprocess.run(
            ["git", *arguments],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            env={**os.environ, **GIT_ENVIRONMENT},
            check=False,
        )
    except FileNotFoundError:
        return None, "git is not installed"
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"git did not answer ({type(error).__name__})"
    if result.returncode != 0:
        return None, (result.stderr.strip().splitlines() or ["git failed"])[0]
    return result.stdout, ""


def _status_paths(porcelain: str) -> list[str]:
    """The paths of `git status --porcelain -z` output (a rename's new path, not its old one)."""
    entries = porcelain.split("\0")
    paths, index = [], 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if entry[0] in "RC":  # renamed or copied: the next entry is the old path
            index += 1
    return paths


def is_pipeline_output(path: str, outputs: Collection[str]) -> bool:
    """True for dvc.lock, a .gitignore, and a path a dvc.yaml stage declares (or inside one)."""
    if path == LOCK_FILE or Path(path).name == ".gitignore":
        return True
    return any(path == output or path.startswith(output + "/") for output in outputs)


def current_commit(root: Path, outputs: Collection[str]) -> Commit:
    """The commit `root` is at, and its uncommitted files other than the pipeline's outputs.

    Args:
        outputs: repository-relative paths the pipeline writes (dvc.yaml's outs, metrics, plots).
    """
    top, problem = _git(root, "rev-parse", "--show-toplevel")
    if top is None:
        known = "not a git repository" if "not a git repository" in problem else problem
        return Commit(None, problem=known)
    head, problem = _git(root, "rev-parse", "--short", "HEAD")
    if head is None:
        return Commit(None, problem="no commit yet")
    status, problem = _git(root, "status", "--porcelain", "-z", "--untracked-files=all", "--", ".")
    if status is None:
        return Commit(head.strip(), problem=f"git status failed: {problem}")
    top_folder = Path(top.strip()).resolve()
    changed = []
    for path in _status_paths(status):
        try:  # git names paths from its top folder; the project may sit below it
            relative = (top_folder / path).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
        if not is_pipeline_output(relative, outputs):
            changed.append(relative)
    return Commit(head.strip(), tuple(sorted(changed)))


def collect(layout: Layout, outputs: Collection[str]) -> Provenance:
    """The provenance of a page built now from the repository at `layout`.

    Args:
        outputs: the paths dvc.yaml's stages declare (reports/ is left out whatever they are).
    """
    digest = file_sha256(layout.params_file)
    written = {*outputs, layout.relative(layout.reports_dir).as_posix()}
    return Provenance(
        build_time(),
        current_commit(layout.root, written),
        digest[:SHORT_HASH] if digest else None,
    )
