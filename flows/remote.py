"""What ``make push`` and ``make pull`` run: ``dvc push`` / ``dvc pull`` against the configured DVC
remote, with one line that says what to do when it is not configured or refuses, and, after a
pull, whether the workspace is what ``dvc.lock`` and the ``.dvc`` files record (no stage to rerun,
no data missing).

Run with ``python -m flows.remote push|pull [REMOTE]`` (``--help`` says what it does).

DVC alone already pushes and pulls; this wrapper exists for four things it does not do. It names
every ``dvc.yaml`` and ``.dvc`` file git sees as DVC's targets: left to itself, DVC misses
continual learning's batches (``data/batches/<version>.dvc``; `dvc_files` says why). With no
remote, DVC's error says ``dvc remote add`` but not what a remote needs here (an S3 URL, an
endpoint and credentials from the environment). A credential in the committed ``.dvc/config``
would be in git history for good; it is refused before anything is sent (the local
``.dvc/config.local``, git-ignored, may hold one). And a failed S3 call surfaces as ``ERROR:
unexpected error - Unable to locate credentials``: the last line here names the environment
variable to set. Torch-free.

Endpoint and credentials are botocore's own: ``AWS_ENDPOINT_URL`` (botocore >= 1.31 reads it when
the remote has no ``endpointurl``; measured with dvc-s3 3.3 and moto's server),
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or ``AWS_PROFILE``.
"""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from flows.stages import DvcOutput, dvc_command, stream
from tasks.core.errors import UserError
from tasks.core.layout import Layout
from tasks.core.runner import EX_TEMPFAIL, EX_USER
from tasks.core.secrets import secret_looking_keys

USAGE = """\
usage: python -m flows.remote [-h] {push,pull} [REMOTE]    (what `make push` / `make pull` run)

push: send every cached output that dvc.lock records (data, models, the registry, the bento) and
every .dvc file references (continual learning's batches, data/batches/*.dvc) to the DVC remote
(`dvc push`). pull: fetch them and check them out (`dvc pull`), then check with `dvc status`
that no stage needs to rerun and every .dvc file's data is there. REMOTE defaults to the default
remote (`dvc remote add -d`). Metrics and plots (cache: false) are not sent: they are committed
to git with dvc.lock; so are params.yaml and the .dvc files.

The endpoint and credentials come from the environment: AWS_ENDPOINT_URL (an S3-compatible
server; or `dvc remote modify --local <name> endpointurl ...`), AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, or AWS_PROFILE.

exit codes: 0 success (for pull: and nothing to rerun); 1 no remote, a credential in the
committed .dvc/config, refused credentials, a missing bucket, or a pull that leaves stages to
rerun or data missing; 75 the endpoint could not be reached (try again); otherwise DVC's own code.

options:
  -h, --help  show this message and exit (nothing is run)
"""

ADD_REMOTE = (
    "add one: `dvc remote add -d storage s3://BUCKET/PREFIX` (commit .dvc/config), with the "
    "endpoint of an S3-compatible server in AWS_ENDPOINT_URL and the credentials in "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (see README, 'Sharing results')"
)

# Where continual learning keeps its data versions (tasks/continual/batch.py, `batches_dir`): one
# `dvc add`ed folder per batch, its `<version>.dvc` file beside it, committed.
BATCHES = "data/batches"
PATTERNS = ("*.dvc", "*dvc.yaml")  # git pathspecs: `*` matches `/` too, so in any folder

# DVC's error text for a failed S3 call -> what to do, and the exit code.
_HINTS = (
    (
        "Unable to locate credentials",
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
        EX_USER,
    ),
    (
        "Could not connect to the endpoint URL",
        "the S3 endpoint cannot be reached: check AWS_ENDPOINT_URL (or the remote's endpointurl)"
        " and the network, then try again",
        EX_TEMPFAIL,
    ),
    ("bucket does not exist", "the remote's bucket does not exist: create it first", EX_USER),
    ("NoSuchBucket", "the remote's bucket does not exist: create it first", EX_USER),
    ("InvalidAccessKeyId", "the S3 server refused AWS_ACCESS_KEY_ID", EX_USER),
    ("SignatureDoesNotMatch", "the S3 server refused AWS_SECRET_ACCESS_KEY", EX_USER),
    ("AccessDenied", "the credentials may not read or write this bucket", EX_USER),
    ("Forbidden", "the credentials may not read or write this bucket", EX_USER),
)


@dataclass(frozen=True)
class Remote:
    """The DVC remote a push or pull goes to, as DVC's merged config names it."""

    name: str
    url: str
    endpoint: str | None  # where it comes from, for the first line: "... (from AWS_ENDPOINT_URL)"

    def describe(self) -> str:
        """``'storage' (s3://bucket/prefix at http://127.0.0.1:9000 from AWS_ENDPOINT_URL)``."""
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"{self.name!r} ({self.url}{where})"


def _is_file_setting(name: str) -> bool:
    """`credentialpath`, `keyfile`, ...: the path of a file with secrets, not a secret."""
    return name.lower().endswith(("path", "file"))


def committed_secrets(dvc_dir: Path) -> list[str]:
    """The remote settings in the committed ``.dvc/config`` that look like credentials
    (``remote.storage.secret_access_key``)."""
    from dvc.config import Config  # DVC is imported only by the command that needs it

    remotes = Config(dvc_dir=str(dvc_dir), validate=False).load_one("repo").get("remote", {})
    found = secret_looking_keys(remotes, "remote")
    return [key for key in found if not _is_file_setting(key.rsplit(".", 1)[-1])]


def resolve_remote(dvc_dir: Path, name: str | None = None) -> Remote:
    """The remote called `name`, else the default one; a UserError saying how to add one when
    there is none, and naming the committed credential when there is one."""
    from dvc.config import Config

    config = Config(dvc_dir=str(dvc_dir), validate=False)
    remotes = config.get("remote", {})
    chosen = name or config.get("core", {}).get("remote")
    if not remotes:
        raise UserError(f"no DVC remote is configured; {ADD_REMOTE}")
    if not chosen:
        first = sorted(remotes)[0]
        raise UserError(
            f"no default DVC remote (configured: {', '.join(sorted(remotes))}): make one the "
            f"default (`dvc remote default {first}`) or name it (`make push REMOTE={first}`)"
        )
    if chosen not in remotes:
        known = ", ".join(sorted(remotes))
        raise UserError(f"no DVC remote named {chosen!r} (configured: {known})")
    secrets = committed_secrets(dvc_dir)
    if secrets:
        raise UserError(
            f".dvc/config is committed to git but holds {', '.join(secrets)}: remove it "
            "(`dvc remote modify --unset <name> <option>`) and set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY in the environment (or use `dvc remote modify --local`)"
        )
    settings = remotes[chosen]
    endpoint = settings.get("endpointurl")
    if endpoint:
        endpoint = f"{endpoint} from the DVC config"
    elif str(settings.get("url", "")).startswith("s3://"):
        for variable in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):  # botocore's order
            if os.environ.get(variable):
                endpoint = f"{os.environ[variable]} from {variable}"
                break
    return Remote(chosen, str(settings.get("url", "")), endpoint)


def hint_for(error_lines: list[str]) -> tuple[str, int] | None:
    """What to do about DVC's `error_lines`, and the exit code; None when nothing is known."""
    text = "\n".join(error_lines)
    for needle, hint, code in _HINTS:
        if needle in text:
            return hint, code
    return None


def dvc_files(root: Path) -> list[str]:
    """Every ``dvc.yaml`` and ``.dvc`` file of the workspace that git sees (committed, or new and
    not ignored), relative to `root`: the targets of every push, pull and status check here.

    DVC's own collection (no targets) is not used because it misses the batches. It walks the
    workspace and skips each folder that scmrepo's dulwich backend calls git-ignored, and dulwich
    (1.2, under scmrepo 3.6) matches the ``/data/*`` line of .gitignore against the folder
    ``data/`` itself, which git does not (``git check-ignore data/`` is silent). So DVC never
    looked inside ``data/``: `dvc push` said "Everything is up to date" with every batch unsent,
    and a clone's `dvc pull` and `dvc status` were as blind. Git's own answer is what a clone
    has. Empty outside a git repository, where DVC's collection consults no ignore rules.
    """
    result = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *PATTERNS],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return []
    listed = {name for name in result.stdout.split("\0") if name}
    return sorted(
        name
        for name in listed
        if (name.endswith(".dvc") or posixpath.basename(name) == "dvc.yaml")
        and (root / name).is_file()  # --cached lists a file deleted from the workspace too
    )


def _counted(count: int, noun: str, plural: str) -> str:
    return f"{count} {noun if count == 1 else plural}"


def what_travels(targets: list[str]) -> str:
    """``the outputs dvc.lock records and 2 .dvc-tracked batches (data/batches/*.dvc)``: said
    first, so a batch left out (not committed, not added) shows before anything is sent."""
    dvc_tracked = [name for name in targets if name.endswith(".dvc")]
    batches = sum(posixpath.dirname(name) == BATCHES for name in dvc_tracked)
    text = (
        f"the outputs dvc.lock records and "
        f"{_counted(batches, '.dvc-tracked batch', '.dvc-tracked batches')} ({BATCHES}/*.dvc)"
    )
    others = len(dvc_tracked) - batches
    if others:
        text += f" and {_counted(others, 'other .dvc file', 'other .dvc files')}"
    return text


def _dvc(action: str, remote: Remote, root: Path, *arguments: str) -> tuple[int, list[str]]:
    """Run ``dvc <action> -r <remote>`` streaming its output; its exit code and ERROR lines."""
    output = DvcOutput()

    def forward(text: str, is_progress: bool) -> None:
        sys.stdout.write(text + ("\r" if is_progress else "\n"))
        sys.stdout.flush()
        if not is_progress:
            output.record(text)

    code = stream(dvc_command(action, "-r", remote.name, *arguments), root, forward)
    return code, [line for line in output.lines if line.startswith("ERROR: ")]


def stale_stages(root: Path, targets: list[str] | None = None) -> list[str]:
    """The stages and .dvc files `dvc status` finds not up to date with dvc.lock or with their
    .dvc file (empty: nothing to rerun, nothing missing); `targets` as `dvc_files` gives them."""
    result = subprocess.run(
        dvc_command("status", "--json", *(targets or [])),
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"dvc status failed after the pull: {last}")
    return sorted(name.split(":")[-1] for name in json.loads(result.stdout or "{}"))


def uncommitted(root: Path) -> list[str]:
    """dvc.lock, params.yaml, reports/ and .dvc files git sees as changed or new: a clone would not
    find what was pushed (params.yaml: its stages would look changed)."""
    paths = ["dvc.lock", "params.yaml", "reports", ".dvc/config", "*.dvc"]
    result = subprocess.run(
        ["git", "status", "--porcelain", "--", *paths],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    return [line[3:] for line in result.stdout.splitlines()] if result.returncode == 0 else []


def transfer(action: str, root: Path, name: str | None = None) -> int:
    """`make push` / `make pull` in the repository at `root`; returns the exit code."""
    remote = resolve_remote(root / ".dvc", name)
    targets = dvc_files(root)
    direction = "to" if action == "push" else "from"
    print(
        f"make {action}: {action}ing {what_travels(targets)} {direction} {remote.describe()}",
        flush=True,
    )
    code, errors = _dvc(action, remote, root, *targets)
    if code != 0:
        hint, hint_code = hint_for(errors) or (None, code)
        what = f": {hint}" if hint else ""
        print(f"make {action}: dvc {action} failed with exit {code}{what}", file=sys.stderr)
        return hint_code
    if action == "push":
        changed = uncommitted(root)
        if changed:
            print(
                f"make push: changes to {', '.join(changed[:5])} are not committed to git: commit "
                "them (and git push), or a clone will not know what was pushed",
                file=sys.stderr,
            )
        return 0
    stale = stale_stages(root, targets)
    missing = [name for name in stale if name.endswith(".dvc")]
    stages = [name for name in stale if name not in missing]
    if stages:
        print(
            f"make pull: stages not up to date with dvc.lock: {', '.join(stages)} (`dvc status` "
            "says why; cache: false outputs, metrics and plots, come from git, not the remote)",
            file=sys.stderr,
        )
    if missing:
        print(
            f"make pull: data not as its .dvc file says: {', '.join(missing)} (`dvc status "
            f"{missing[0]}` says why; was it pushed? `dvc status --cloud {missing[0]}`)",
            file=sys.stderr,
        )
    if stale:
        return EX_USER
    print(
        "make pull: the workspace matches dvc.lock and the .dvc files; no stage needs to rerun",
        flush=True,
    )
    return 0


def main(arguments: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if arguments is None else arguments
    if "-h" in arguments or "--help" in arguments:
        print(USAGE, end="")
        return
    if not arguments or arguments[0] not in ("push", "pull") or len(arguments) > 2:
        print(USAGE, end="", file=sys.stderr)
        raise SystemExit(EX_USER)
    action, name = arguments[0], (arguments[1] if len(arguments) > 1 else None)
    try:
        code = transfer(action, Layout.discover().root, name or None)
    except UserError as error:
        print(f"make {action}: {error}", file=sys.stderr)
        code = EX_USER
    raise SystemExit(code)


if __name__ == "__main__":
    main()
