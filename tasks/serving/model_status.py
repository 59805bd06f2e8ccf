"""What the service says about its model: which version answers, and which is the champion.

GET /model and /metrics (`sixfold_model_info{served, champion}`, `sixfold_served_is_champion`)
say which version the service answers with and which is the registry's champion, so a server
left behind (pinned, serving an old bento, or its new model failing to load:
`tasks.serving.following`) shows at the first scrape, not only in the prediction log.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.errors import UserError
from tasks.registry.store import load_registry

logger = logging.getLogger(__name__)


class ChampionWatch:
    """The registry's champion, re-read only when registry.json changes (a stat per look).

    None when the service has no registry beside it (a served bento carries none)."""

    def __init__(self, registry_file: Path) -> None:
        self.registry_file = registry_file
        self._stamp: tuple[int, int] | None = None
        self._champion: str | None = None

    def champion(self) -> str | None:
        try:
            status = self.registry_file.stat()
        except OSError:
            return None
        stamp = (status.st_mtime_ns, status.st_size)
        if stamp != self._stamp:
            self._stamp = stamp  # a registry that cannot be read is reported once per change
            try:
                self._champion = load_registry(self.registry_file.parent).champion
            except (OSError, ValueError, UserError) as error:
                logger.warning("sixfold: the registry could not be read: %s", error)
        return self._champion


@dataclass(frozen=True)
class ModelStatus:
    """What GET /model answers: the served version, the champion, and the follow policy."""

    served: str
    champion: str | None
    follows: bool
    policy: str

    @property
    def served_is_champion(self) -> bool | None:
        return None if self.champion is None else self.served == self.champion

    def as_json(self) -> dict[str, Any]:
        return {
            "served": self.served,
            "champion": self.champion,
            "served_is_champion": self.served_is_champion,
            "follows_champion": self.follows,
            "policy": self.policy,
        }


@dataclass(frozen=True)
class ModelMetrics:
    info: Any  # prometheus_client.Gauge, labels served and champion

    def show(self, status: ModelStatus, before: ModelStatus | None) -> None:
        """Point the gauges at `status`; the pair shown `before` goes to 0 (a multiprocess
        gauge keeps every label set it was given, so an old one is zeroed, not removed)."""
        if before is not None and (before.served, before.champion) != (
            status.served,
            status.champion,
        ):
            self.info.labels(**_labels(before)).set(0)
        self.info.labels(**_labels(status)).set(1)
        if status.served_is_champion is not None:
            champion_gauge().set(1 if status.served_is_champion else 0)


def _labels(status: ModelStatus) -> dict[str, str]:
    return {"served": status.served, "champion": status.champion or "unknown"}


@functools.cache
def model_metrics() -> ModelMetrics:
    """The gauges of this process, made once, in the worker (as `tasks.serving.metrics`: after
    BentoML set PROMETHEUS_MULTIPROC_DIR). `livemax`: every front worker shows the same pair,
    and a dead worker's stale value is not shown."""
    import prometheus_client

    return ModelMetrics(
        info=prometheus_client.Gauge(
            "sixfold_model_info",
            "1 for the model version served now and the registry's champion (unknown: no "
            "registry beside the service)",
            ["served", "champion"],
            multiprocess_mode="livemax",
        ),
    )


@functools.cache
def champion_gauge() -> Any:
    """`sixfold_served_is_champion`, made only once there is a champion to compare with: a
    multiprocess gauge exports 0 from the moment it exists, and a served bento with no registry
    beside it would then read "not the champion" where GET /model says null."""
    import prometheus_client

    return prometheus_client.Gauge(
        "sixfold_served_is_champion",
        "1 when the served model is the registry's champion, 0 when it is not (absent: no "
        "registry beside the service)",
        multiprocess_mode="livemax",
    )
