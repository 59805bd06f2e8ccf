"""Building the bento in the project's own BentoML store (`models/bentoml`, never ~/bentoml).

BentoML reads `BENTOML_HOME` once, the first time a store is used, so :func:`use_project_store`
sets it before anything touches BentoML, and refuses to go on if this process already resolved
another store (a build into the home folder would be a silent leak). Every child process (the
server the stage validates) gets the same variables through :func:`child_environment`.

Each build makes a new bento version; the older bentos of the same name in the project store
are removed once the new one is saved, so `models/bentoml` (a DVC output) holds exactly what
the last run validated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from tasks.core.errors import UserError, require, shown
from tasks.core.layout import Layout
from tasks.serving.store import bentoml_environment

BENTOFILE = Path("deploy") / "bentofile.yaml"


class BuildFailed(UserError):
    """BentoML could not build the bento (a bad bentofile, a service that does not import)."""


def child_environment(layout: Layout, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the project's store, no telemetry."""
    return {**(os.environ if base is None else base), **bentoml_environment(layout)}


def use_project_store(layout: Layout) -> None:
    """Point this process's BentoML at `layout.bentoml_home`, before its first store access."""
    os.environ.update(bentoml_environment(layout))
    from bentoml._internal.configuration.containers import BentoMLContainer

    resolved = Path(BentoMLContainer.bentoml_home.get()).resolve()
    if resolved != layout.bentoml_home.resolve():
        raise UserError(
            f"BentoML in this process already uses the store {resolved}, not the project's "
            f"{shown(layout.bentoml_home)}; run the stage in a fresh process"
        )


def build_bento(layout: Layout) -> str:
    """Build the bento from deploy/bentofile.yaml into the project store; its tag."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    bentofile = layout.root / BENTOFILE
    require(bentofile)
    try:
        bento = bentoml.bentos.build_bentofile(str(bentofile), build_ctx=str(layout.root))
    except (BentoMLException, ImportError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise BuildFailed(
            f"bentoml could not build {shown(bentofile)}: {type(error).__name__}: {first}"
        ) from error
    remove_older_bentos(str(bento.tag))
    return str(bento.tag)


def remove_older_bentos(tag: str) -> list[str]:
    """Delete every bento of `tag`'s name in the store except `tag`; the tags removed."""
    import bentoml

    name = tag.split(":", 1)[0]
    removed = [str(b.tag) for b in bentoml.bentos.list(name) if str(b.tag) != tag]
    for old in removed:
        bentoml.bentos.delete(old)
    return removed
