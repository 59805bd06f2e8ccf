"""How every stage's ``main()`` ends: one clear line for a user's mistake, exit 75 for a blip.

- A :class:`~tasks.core.errors.ConfigError` (params.yaml, a tuned override) prints
  ``error: <key and what is allowed>`` and exits 2.
- Any other :class:`~tasks.core.errors.UserError` (bad data source, a split that cannot be made,
  weights that do not fit, a missing upstream output, too much data quarantined) prints
  ``error: <what is wrong and what to do>`` and exits 1: no traceback, nothing to retry.
- A transient error (a refused or reset connection, a timeout, S3 endpoint trouble) prints
  ``error (transient): ...`` and exits 75 (EX_TEMPFAIL), which the Prefect flow retries with
  backoff.
- Missing credentials or a refused permission print one line and exit 1.
- Ctrl-C (KeyboardInterrupt) prints one line and exits 130 (the train stage says more: after
  which epoch, and where it resumes).
- Anything else is a bug: the traceback is shown as usual.

Before any of that, the command line: ``-h``/``--help`` prints what the stage does (its module
docstring's first paragraph) and what it reads and writes (its entry in ``dvc.yaml``) and exits
0 without doing any work; an argument the stage does not take prints one usage line and exits 2.
"""

from __future__ import annotations

import errno
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import yaml

from tasks.core.errors import ConfigError, UserError
from tasks.core.layout import Layout

EX_USER = 1  # a mistake in the data or files
EX_CONFIG = 2  # a mistake in params.yaml, found before any work
EX_USAGE = 2  # an argument the command does not take (the shell convention, as argparse)
EX_TEMPFAIL = 75  # BSD's EX_TEMPFAIL: try again later; the Prefect flow retries these
EX_INTERRUPTED = 130  # 128 + SIGINT, the shell's code for a command stopped by Ctrl-C
HELP_FLAGS = ("-h", "--help")

_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EPIPE,
}
_TRANSIENT_NAMES = {  # by name, so botocore / aiohttp need not be imported to recognise them
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ClientOSError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
}
_ACCESS_NAMES = {"NoCredentialsError", "PartialCredentialsError", "InvalidAccessKeyId"}


def is_transient(error: BaseException) -> bool:
    """True when `error` (or anything in its cause chain) is a network or timeout problem."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        if type(current).__name__ in _TRANSIENT_NAMES:
            return True
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


def is_access_problem(error: BaseException) -> bool:
    """True for missing credentials or a refused permission (local or on S3)."""
    return isinstance(error, PermissionError) or type(error).__name__ in _ACCESS_NAMES


def wants_help(arguments: Sequence[str]) -> bool:
    return any(argument in HELP_FLAGS for argument in arguments)


def print_help(text: str) -> NoReturn:
    """Print a --help text and exit 0 (quietly, also when a pager such as `head` closed early)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit
    raise SystemExit(0)


def usage_error(usage: str, problem: str) -> NoReturn:
    """Print `problem` and the usage on one line and exit 2 (a command-line mistake)."""
    print(f"error: {problem}; {usage} (--help says more)", file=sys.stderr)
    raise SystemExit(EX_USAGE)


def _path_of(entry: Any) -> str:
    """A dvc.yaml deps/outs entry (`path` or `{path: {options}}`) as its path."""
    return str(next(iter(entry))) if isinstance(entry, dict) else str(entry)


def _params_of(entries: list[Any]) -> list[str]:
    """dvc.yaml `params:` entries (`key`, or `{file: [keys]}`) as `params.yaml: a, b`."""
    by_file: dict[str, list[str]] = {}
    for entry in entries:
        items = entry.items() if isinstance(entry, dict) else [("params.yaml", [entry])]
        for file, keys in items:
            by_file.setdefault(str(file), []).extend(str(key) for key in keys or ["(all)"])
    return [f"{file}: {', '.join(keys)}" for file, keys in by_file.items()]


def dvc_stage(layout: Layout, module: str) -> tuple[str, dict[str, Any]] | None:
    """The name and declaration of the dvc.yaml stage whose command runs `module`, if any."""
    try:
        stages = yaml.safe_load((layout.root / "dvc.yaml").read_text()).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    command = ["python", "-m", module]
    for name, stage in stages.items():
        if isinstance(stage, dict) and str(stage.get("cmd", "")).split() == command:
            return str(name), stage
    return None


def _section(title: str, lines: Sequence[str]) -> list[str]:
    wrapped = [
        textwrap.fill(line, 96, initial_indent="  ", subsequent_indent="    ") for line in lines
    ]
    return [f"{title}:", *(wrapped or ["  (nothing)"])]


def stage_help(
    module: str,
    docstring: str | None,
    layout: Layout,
    options: Mapping[str, str] | None = None,
    reads: Sequence[str] = (),
    writes: Sequence[str] = (),
) -> str:
    """The --help text of `python -m <module>`: usage, what it does, reads and writes, options.

    `reads`/`writes` are added to what the module's dvc.yaml stage declares (for a step that
    DVC does not run, they are all there is).
    """
    options = dict(options or {})
    flags = "".join(f" [{flag}]" for flag in options)
    paragraphs = (docstring or "").strip().split("\n\n")
    lines = [f"usage: python -m {module} [-h]{flags}", "", " ".join(paragraphs[0].split()), ""]
    declared = dvc_stage(layout, module)
    if declared is None:
        lines.append("Not a DVC stage: run it yourself (make run and the Prefect flow do).")
        inputs, outputs = list(reads), list(writes)
    else:
        name, stage = declared
        lines.append(f"DVC stage '{name}': `dvc repro {name}` runs it after the stages it needs.")
        code = [path for path in map(_path_of, stage.get("deps") or []) if path.endswith(".py")]
        data = [path for path in map(_path_of, stage.get("deps") or []) if not path.endswith(".py")]
        inputs = [*data, *_params_of(stage.get("params") or []), *reads]
        inputs.append(f"code: {len(code)} modules (dvc.yaml lists them)")
        outputs = [_path_of(entry) for entry in stage.get("outs") or []]
        outputs += [f"{_path_of(entry)} (metrics)" for entry in stage.get("metrics") or []]
        outputs += [f"{_path_of(entry)} (plot)" for entry in stage.get("plots") or []]
        outputs += list(writes)
    lines += ["", *_section("reads", inputs), *_section("writes", outputs), "", "options:"]
    for flag, meaning in {"-h, --help": "print this help and exit", **options}.items():
        lines.append(f"  {flag:<12} {meaning}")
    return "\n".join(lines)


def _check_arguments(
    main: Callable[[], None],
    arguments: Sequence[str],
    options: Mapping[str, str] | None,
    reads: Sequence[str],
    writes: Sequence[str],
) -> None:
    """Answer --help (exit 0) or refuse an argument the stage does not take (exit 2)."""
    module_globals = getattr(main, "__globals__", {})
    spec = module_globals.get("__spec__")
    module = spec.name if spec is not None else main.__module__
    if wants_help(arguments):
        docstring = module_globals.get("__doc__")
        print_help(stage_help(module, docstring, Layout.discover(), options, reads, writes))
    unknown = [argument for argument in arguments if argument not in (options or {})]
    if unknown:
        flags = "".join(f" [{flag}]" for flag in options or {})
        usage_error(f"usage: python -m {module} [-h]{flags}", f"unknown argument {unknown[0]!r}")


def stage_main(
    main: Callable[[], None],
    options: Mapping[str, str] | None = None,
    reads: Sequence[str] = (),
    writes: Sequence[str] = (),
    argv: Sequence[str] | None = None,
) -> None:
    """Run a stage's main() and turn known failures into one line and an exit code.

    Args:
        main: the stage's main(); its module's docstring is the --help description.
        options: the flags the stage takes besides --help (flag -> meaning), e.g. evaluate's
            ``--show``; any other argument is refused with exit 2 before any work.
        reads, writes: what --help lists beside the stage's dvc.yaml declaration (for a step
            that DVC does not run, such as ``tasks.source``).
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    _check_arguments(main, sys.argv[1:] if argv is None else argv, options, reads, writes)
    try:
        main()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EX_USER) from None
    except KeyboardInterrupt:
        print(
            "interrupted (Ctrl-C); run it again (dvc repro or make run) to go on", file=sys.stderr
        )
        raise SystemExit(EX_INTERRUPTED) from None
    except Exception as error:
        if is_access_problem(error):
            print(
                f"error: access denied ({type(error).__name__}: {error}); check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and permissions",
                file=sys.stderr,
            )
            raise SystemExit(EX_USER) from None
        if not is_transient(error):
            raise
        print(
            f"error (transient, a retry may succeed): {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        raise SystemExit(EX_TEMPFAIL) from None
