"""The running service follows the champion: a promotion reaches it without a restart.

The package stage (and continual learning, through it) saves each new champion into the
project's BentoML store as `sixfold-classifier:latest` (`tasks.serving.store`). A server that
loaded the model once at start would serve the retired champion until someone restarted it,
and the prediction log would say so only to whoever read its `model_version` field. So, unless
a model is pinned, the service looks at the store every SIXFOLD_RELOAD_S seconds and swaps to a
newer saved model without dropping a request:

- :class:`Holder` keeps the served model behind one reference, replaced whole and never
  mutated: a request takes it once and finishes on that model, however many swaps happen
  meanwhile; the next request gets the new one. The new model is loaded fully (in a thread, so
  the event loop keeps answering) before the swap.
- The inference process leads (:class:`StoreFollower`): it alone decides which model answers
  a batch, and numbers each model it installs (a *generation*). Every row it returns carries
  the generation that computed it (:func:`with_generation`), so the HTTP front, which reads the
  rows with a model's classes and logs its version, learns of a swap from the answer itself
  and never labels a row with another model's classes or version (:class:`Adopter`). Two
  processes watching the store each on its own would disagree for up to one interval.
- Not followed: a model pinned with SIXFOLD_MODEL_TAG, or a served bento (it packs the model it
  was validated with; the store's newer models are not in it). :class:`FollowPolicy` says which,
  and the service says so in its log and at GET /model.

What the service says about it (GET /model, /metrics) is `tasks.serving.model_status`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from tasks.core.errors import UserError

RELOAD_VARIABLE = "SIXFOLD_RELOAD_S"
# One look at the store is a read of its `latest` file and of a small model.yaml (measured:
# 1.4 ms); every 2 s costs nothing measurable and keeps a promotion's reach short.
DEFAULT_RELOAD_S = 2.0
# A generation travels in a float32 column: exact up to 2**24. A process starts at a random
# number below 2**23 so that an inference process restarted by BentoML does not reuse the
# numbers of its predecessor (the front would take a new model's rows for the old one's).
GENERATION_START_LIMIT = 2**23
KEPT_MODELS = 2  # the front keeps the current model and the one before (requests in flight)
# A request answered by a model the front had not decoded for (a swap while it was in flight)
# runs again with that model; twice more at most (two swaps within one request would take two
# promotions seconds apart).
SWAP_ATTEMPTS = 3
logger = logging.getLogger(__name__)

M = TypeVar("M")
T = TypeVar("T")


def model_log() -> logging.Logger:
    """The log of model changes (the policy at start, each swap, a model that failed to load),
    set to show INFO lines: a BentoML server's root logger passes WARNING and above only."""
    logger.setLevel(logging.INFO)
    return logger


def reload_interval() -> float:
    """SIXFOLD_RELOAD_S: seconds between two looks at the store (default 2; > 0).

    Raises:
        UserError: the value is not a positive number.
    """
    text = os.environ.get(RELOAD_VARIABLE, "").strip()
    if not text:
        return DEFAULT_RELOAD_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{RELOAD_VARIABLE} must be a number of seconds > 0, got {text!r}")
    return value


@dataclass(frozen=True)
class FollowPolicy:
    """Whether the service follows the store's latest model, and why (one line for people)."""

    follows: bool
    interval_s: float
    reason: str

    @classmethod
    def of(cls, pinned: str | None, bento: str | None, interval_s: float) -> FollowPolicy:
        """The policy for a service whose model is `pinned` (SIXFOLD_MODEL_TAG, or None) and
        that runs from the bento `bento` (its tag, or None when served from the repository)."""
        if pinned:
            reason = f"pinned to {pinned} by SIXFOLD_MODEL_TAG: a promotion is not followed"
            return cls(False, interval_s, reason)
        if bento:
            reason = (
                f"the bento {bento} serves the model it was built with: a promotion is not "
                "followed (serve the new bento, or serve deploy.service:Classifier)"
            )
            return cls(False, interval_s, reason)
        reason = (
            f"follows the store's latest model (the champion the package step saved), "
            f"looked for every {interval_s:g} s ({RELOAD_VARIABLE})"
        )
        return cls(True, interval_s, reason)


@dataclass(frozen=True)
class Loaded(Generic[M]):
    """A served model: its version (the registry id), the generation the inference process
    gave it (None until the front learns it) and the loaded thing itself."""

    version: str
    generation: int | None
    model: M


class Holder(Generic[M]):
    """The served model behind one reference, replaced whole (see the module docstring)."""

    def __init__(self, version: str, model: M, generation: int | None = None) -> None:
        self._current = Loaded(version, generation, model)
        self.generations: dict[int, str] = {} if generation is None else {generation: version}

    @property
    def current(self) -> Loaded[M]:
        """The model to use for one whole request: take it once, use it to the end."""
        return self._current

    def install(self, version: str, model: M, generation: int | None = None) -> Loaded[M]:
        """Serve `model` (already loaded) from now on; a generation one above the current's
        unless given. One assignment: a reader sees the old model or the new, never a mix."""
        if generation is None and self._current.generation is not None:
            generation = self._current.generation + 1
        loaded = Loaded(version, generation, model)
        if generation is not None:  # a new table, not an insert: readers iterate the old one
            self.generations = {**self.generations, generation: version}
        self._current = loaded
        return loaded


def first_generation() -> int:
    """A random first generation for an inference process (see GENERATION_START_LIMIT)."""
    return secrets.randbelow(GENERATION_START_LIMIT)


class StoreFollower(Generic[M]):
    """The inference process's watch: install the store's latest model when it changes.

    A model that fails to load (a missing or corrupt file) is logged once and skipped; the
    model already served keeps answering, and GET /model shows the server behind.
    """

    def __init__(
        self,
        holder: Holder[M],
        latest: Callable[[], str | None],
        load: Callable[[str], M],
    ) -> None:
        self.holder = holder
        self._latest = latest
        self._load = load
        self.broken: dict[str, str] = {}  # version -> why it could not be loaded

    async def check(self) -> Loaded[M] | None:
        """One look at the store; the newly installed model, or None when nothing changed."""
        version = await asyncio.to_thread(self._latest)
        if version is None or version == self.holder.current.version or version in self.broken:
            return None
        try:
            model = await asyncio.to_thread(self._load, version)
        except Exception as error:  # any failure: keep serving the model that works
            self.broken[version] = f"{type(error).__name__}: {error}"
            logger.error(
                "sixfold: model %s could not be loaded, still serving %s: %s",
                version,
                self.holder.current.version,
                self.broken[version],
            )
            return None
        before = self.holder.current.version
        installed = self.holder.install(version, model)
        logger.info("sixfold: now serving model %s (was %s)", version, before)
        return installed


class ModelChanged(Exception):
    """The inference process answered with a model the front could not take up."""


class Adopter(Generic[M]):
    """The HTTP front's side: whatever generation answered, its model (classes, card, network
    for explanations) becomes the front's, loaded once and kept with the one before it.

    `generations` asks the inference process for its generation -> version table (a call over
    its socket); `load` loads the front's part of a saved version from the store.
    """

    def __init__(
        self,
        version: str,
        model: M,
        load: Callable[[str], M],
        generations: Callable[[], Awaitable[dict[int, str]]],
    ) -> None:
        self.holder: Holder[M] = Holder(version, model)  # generation unknown until asked
        self._load = load
        self._generations = generations
        self._kept: dict[str, M] = {version: model}
        self._broken: dict[str, str] = {}  # version -> why the front could not load it
        self._lock = asyncio.Lock()

    @property
    def current(self) -> Loaded[M]:
        return self.holder.current

    async def adopt(self, generation: int) -> Loaded[M]:
        """The front's model for `generation`, installed as current (loaded unless kept).

        Raises:
            ModelChanged: the inference process does not know `generation` (it restarted), or
                the front's part of its model could not be loaded (a request gets 503, never
                a 500; the failure is logged once and not retried).
        """
        async with self._lock:  # concurrent requests that saw the swap load the model once
            current = self.holder.current
            if current.generation == generation:
                return current
            table = await self._generations()
            if generation not in table:
                raise ModelChanged(f"the inference process knows no model generation {generation}")
            version = table[generation]
            if version in self._broken:
                raise ModelChanged(self._broken[version])
            model = self._kept.get(version)
            if model is None:
                try:
                    model = await asyncio.to_thread(self._load, version)
                except Exception as error:  # a corrupt card or weights: refuse, do not crash
                    self._broken[version] = (
                        f"the front could not load model {version}: {type(error).__name__}: {error}"
                    )
                    logger.error("sixfold: %s", self._broken[version])
                    raise ModelChanged(self._broken[version]) from error
                logger.info("sixfold: the front now reads model %s", version)
            self._kept = {version: model, current.version: current.model}  # KEPT_MODELS
            return self.holder.install(version, model, generation)

    async def check(self) -> Loaded[M]:
        """Take up the inference process's newest model (the periodic look: /explain, GET
        /model and the metrics follow even when no /predict comes)."""
        table = await self._generations()
        if not table:
            return self.holder.current
        return await self.adopt(max(table))


async def on_one_model(
    adopter: Adopter[M],
    attempt: Callable[[Loaded[M]], Awaitable[tuple[T, np.ndarray]]],
    attempts: int = SWAP_ATTEMPTS,
) -> tuple[Loaded[M], T, np.ndarray] | None:
    """Run `attempt` (decode for the front's model, classify) until its rows came from that
    model; the model, what `attempt` made, and the rows without their generation. None after
    `attempts` tries (a swap in every one of them).

    Rows from a model the front did not know yet make it the front's: when that is the model
    the uploads were decoded for (the front only had not learnt its generation), the rows stand;
    otherwise the request runs again, decoded for the new model.
    """
    for _ in range(attempts):
        served = adopter.current
        made, outputs = await attempt(served)
        rows, generations = split_generation(outputs)
        generation = generation_of(generations)
        if generation is None:  # split over a swap: once more, on one model
            continue
        if generation != served.generation:
            try:
                adopted = await adopter.adopt(generation)
            except ModelChanged:
                continue
            if adopted.model is not served.model:
                continue
            served = adopted
        return served, made, rows
    return None


def with_generation(outputs: np.ndarray, generation: int) -> np.ndarray:
    """`outputs` (N, K) with a last column holding `generation` on every row (float32 at
    least, where generations below 2**24 are exact)."""
    dtype = np.promote_types(outputs.dtype, np.float32)
    column = np.full((outputs.shape[0], 1), generation, dtype=dtype)
    return np.concatenate([outputs.astype(dtype, copy=False), column], axis=1)


def split_generation(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`with_generation`: (the outputs, each row's generation as int)."""
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        raise ValueError(f"the model returned outputs of shape {outputs.shape}")
    return outputs[:, :-1], np.rint(outputs[:, -1]).astype(np.int64)


def generation_of(rows: np.ndarray) -> int | None:
    """The one generation of a batch's rows; None when they mix (a request split over a swap)."""
    found = {int(value) for value in rows}
    return found.pop() if len(found) == 1 else None


async def keep_checking(check: Callable[[], Awaitable[object]], interval_s: float) -> None:
    """Call `check` every `interval_s` seconds until cancelled; a failed check is logged (once
    per distinct message) and the next one runs as planned."""
    last_failure = ""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await check()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the watch must outlive any one failure
            message = f"{type(error).__name__}: {error}"
            if message != last_failure:
                logger.warning("sixfold: looking for a new champion failed: %s", message)
            last_failure = message
        else:
            last_failure = ""


def latest_saved_version(tag: str) -> str | None:
    """The version `tag` (e.g. sixfold-classifier:latest) names in this process's store now;
    None when it cannot be read this time (a save half done): the next look tries again."""
    import bentoml

    try:
        return str(bentoml.models.get(tag).tag.version)
    except Exception as error:  # NotFound, a latest file being rewritten, a half-saved model
        logger.debug("sixfold: %s not readable now: %s", tag, error)
        return None
