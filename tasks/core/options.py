"""Command-line options of the entry points that are not DVC stages (the flows, the drift check,
continual learning, the simulator): one parser, one error line.

Kept apart from `tasks.core.runner`, which every stage imports (and lists as a DVC dependency):
a change here reruns no stage.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tasks.core.runner import usage_error


def parse_options(
    arguments: Sequence[str], usage: str, valued: Iterable[str], switches: Iterable[str] = ()
) -> dict[str, str | bool]:
    """Options given as ``--flag value`` or ``--flag=value`` (`valued`) and bare ``--flag``
    (`switches`, True when given); a flag given twice keeps its last value. Anything else, or a
    valued flag without its value, is one :func:`usage_error` line and exit 2."""
    valued, switches = set(valued), set(switches)
    options: dict[str, str | bool] = {}
    remaining = list(arguments)
    while remaining:
        flag, equals, value = remaining.pop(0).partition("=")
        if flag in switches and not equals:
            options[flag] = True
            continue
        if flag not in valued:
            usage_error(usage, f"unknown argument {flag!r}")
        if not equals:
            if not remaining or remaining[0].startswith("--"):
                usage_error(usage, f"{flag} needs a value")
            value = remaining.pop(0)
        options[flag] = value
    return options
