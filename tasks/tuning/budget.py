"""The search's size from a wall-clock budget (`tune.time_budget_minutes`) and the data.

Users think in minutes, not in trials: "spend two minutes looking". The plan turns the budget
into a number of trials and epochs per trial from what one epoch costs on this data:

1. `epoch_seconds`: a few training steps of every capacity the space can pick (each
   `model.width` / `model.arch` choice, with the online augmentation) are timed on this machine
   with the threads a trial gets; their mean, times the steps of one epoch, times
   EPOCH_OVERHEAD (validation, the train-reference pass, the per-epoch checkpoint and report).
2. The longest trial's epochs follow the data size: enough epochs for about TARGET_STEPS
   optimizer steps (a small data set has few steps per epoch and needs more epochs), between
   `tune.grace_period` + 1 and `tune.max_epochs`.
3. The trials: as many as the budget pays for, with ASHA stopping weak trials at its rungs
   (`asha_epochs`: the expected epochs of one trial), up to `tune.num_samples`; the params.yaml
   configuration's trial, which ASHA never stops early (`tune.keep_params_within_se` > 0),
   costs its every epoch. When even
   MIN_TRIALS would not fit, the longest trial is shortened first (a search of two long trials
   chooses nothing), down to the grace period.

Ray's `time_budget_s` stops the search at HARD_LIMIT times the budget whatever the estimate
said, so a wrong estimate costs accuracy, never the user's time.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from tasks.core.config import Params, TuneSettings

# 8 epochs of the digits' 59 steps gave the best validation accuracy the full train run reaches
# (0.996); fewer steps rank learning rates by their speed, not by where they end up
TARGET_STEPS = 500
MIN_TRIALS = 8  # TPE starts with random draws: fewer trials than this is a random search
# measured on the digits: a trial's epoch (two trials at once on 2 cores, validation and the
# per-epoch checkpoint included) took 0.95-1.0x its steps timed alone; 1.1 leaves a margin
EPOCH_OVERHEAD = 1.1
ASYNC_FACTOR = 1.3  # asynchronous ASHA promotes early trials freely: measured 1.2-1.4x
HARD_LIMIT = 1.5  # Ray stops the search at this multiple of the budget
# seconds a trial costs besides its epochs (Ray starts its actor, builds the Trainer, saves
# checkpoints): measured on the digits, 8 trials of 26 epochs ran 20 s longer than their epochs
TRIAL_OVERHEAD_S = 5.0
TIMED_STEPS = 4


@dataclass(frozen=True)
class SearchPlan:
    """What the search will run, and why (reports/tune/summary.json["budget"])."""

    trials: int
    max_epochs: int
    budget_minutes: float | None
    epoch_seconds: float | None
    steps_per_epoch: int
    slots: int
    expected_minutes: float | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rungs(max_epochs: int, grace_period: int, reduction_factor: int) -> list[int]:
    """ASHA's milestones: grace, grace*rf, grace*rf^2, ... below max_epochs, then max_epochs."""
    milestones = []
    rung = grace_period
    while rung < max_epochs:
        milestones.append(rung)
        rung *= reduction_factor
    return [*milestones, max_epochs]


def asha_epochs(max_epochs: int, grace_period: int, reduction_factor: int) -> float:
    """Expected epochs of one trial under ASHA: a 1/rf share of the trials passes each rung."""
    milestones = rungs(max_epochs, grace_period, reduction_factor)
    epochs, previous = 0.0, 0
    for passed, rung in enumerate(milestones):
        epochs += (rung - previous) / reduction_factor**passed
        previous = rung
    return epochs


def plan_search(
    settings: TuneSettings,
    steps_per_epoch: int,
    slots: int,
    epoch_seconds: float | None,
) -> SearchPlan:
    """The trials and epochs per trial that `settings.time_budget_minutes` pays for."""
    budget = settings.time_budget_minutes
    if budget is None or epoch_seconds is None:
        return SearchPlan(
            settings.num_samples,
            settings.max_epochs,
            None,
            epoch_seconds,
            steps_per_epoch,
            slots,
            None,
            "tune.time_budget_minutes is null: tune.num_samples trials of tune.max_epochs epochs",
        )
    asha = settings.scheduler == "asha"
    seconds = budget * 60 * slots  # what the budget pays for, all slots together
    capacity = seconds / epoch_seconds  # in epochs

    def per_trial(epochs: int) -> float:
        """A trial's expected cost in epochs, its fixed overhead included."""
        overhead = TRIAL_OVERHEAD_S / epoch_seconds
        if not asha:
            return float(epochs) + overhead
        rf = settings.reduction_factor
        return ASYNC_FACTOR * asha_epochs(epochs, settings.grace_period, rf) + overhead

    # ASHA never stops the params.yaml configuration early when train may keep it
    # (tasks/tuning/scheduling.py): that one trial costs its every epoch
    kept = asha and settings.keep_params_within_se > 0

    def affordable(epochs: int) -> float:
        """How many trials of up to `epochs` epochs the budget pays for."""
        if not kept:
            return capacity / per_trial(epochs)
        full = epochs + TRIAL_OVERHEAD_S / epoch_seconds
        return 1 + max(capacity - full, 0.0) / per_trial(epochs)

    def cost(trials: int, epochs: int) -> float:
        """The expected epochs of `trials` trials, overheads included."""
        if not kept:
            return trials * per_trial(epochs)
        return epochs + TRIAL_OVERHEAD_S / epoch_seconds + (trials - 1) * per_trial(epochs)

    low = min(settings.grace_period + 1, settings.max_epochs) if asha else 1
    wanted = min(max(math.ceil(TARGET_STEPS / max(steps_per_epoch, 1)), low), settings.max_epochs)
    epochs = wanted
    least = min(MIN_TRIALS, settings.num_samples)
    shortest = settings.grace_period if asha else 1
    while epochs > shortest and affordable(epochs) < least:
        epochs -= 1
    trials = int(min(settings.num_samples, max(math.floor(affordable(epochs)), min(2, least))))
    expected = cost(trials, epochs) * epoch_seconds / 60 / max(min(slots, trials), 1)
    if epochs < wanted:
        reason = (
            f"{budget:g} min at {epoch_seconds:.1f} s per epoch pays for {capacity:.0f} epochs: "
            f"trials cut to {epochs} epochs (wanted {wanted} for ~{TARGET_STEPS} steps) "
            f"to run {trials} trials"
        )
    elif trials == settings.num_samples:
        reason = (
            f"{budget:g} min at {epoch_seconds:.1f} s per epoch pays for more than "
            f"tune.num_samples ({trials}) trials of {epochs} epochs"
        )
    else:
        reason = (
            f"{budget:g} min at {epoch_seconds:.1f} s per epoch pays for {capacity:.0f} epochs: "
            f"{trials} trials of up to {epochs} epochs (~{TARGET_STEPS} steps)"
        )
    return SearchPlan(
        trials, epochs, budget, epoch_seconds, steps_per_epoch, slots, expected, reason
    )


def epoch_costs(
    params: Params, meta: Any, arrays: Any, dimensions: dict[str, Any]
) -> dict[str, float]:
    """Measured seconds per epoch of every capacity the space can pick, with a trial's threads."""
    from tasks.modeling.fit import steps_per_epoch

    steps = steps_per_epoch(arrays, params.train.batch_size)
    threads = max(1, int(params.tune.cpus_per_trial))
    return measure_epoch_seconds(params, meta, dimensions, steps, threads)


def plan_for(
    params: Params, arrays: Any, costs: dict[str, float], resources: dict[str, float]
) -> SearchPlan:
    """The search's plan on `resources` (Ray's cluster resources): trials run at once, then
    `plan_search` with the mean epoch cost (trials draw capacities evenly at first)."""
    from tasks.modeling.fit import steps_per_epoch

    settings = params.tune
    if settings.gpus_per_trial > 0:
        slots = int(resources.get("GPU", 0) // settings.gpus_per_trial)
    else:
        slots = int(resources.get("CPU", 1) // settings.cpus_per_trial)
    slots = max(1, min(slots, settings.max_concurrent))
    epoch_seconds = sum(costs.values()) / len(costs) if costs else None
    steps = steps_per_epoch(arrays, params.train.batch_size)
    return plan_search(settings, steps, slots, epoch_seconds)


def capacities(params: Params, dimensions: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (model.arch, model.width) pair the space can pick, as overrides."""
    archs = _choices(dimensions, "model.arch", params.model.arch)
    widths = _choices(dimensions, "model.width", params.model.width)
    return [{"model.arch": a, "model.width": w} for a in archs for w in widths]


def _choices(dimensions: dict[str, Any], key: str, current: Any) -> list[Any]:
    dim = dimensions.get(key)
    if dim is None:
        return [current]
    if dim.type == "choice":
        return list(dim.values)
    return [int(dim.low), int(dim.high)]  # an int width: its cheapest and dearest end


def capacity_label(arch: str, width: int) -> str:
    return f"{arch}/{width}"


def trial_capacity(config: dict[str, Any], params: Params) -> str:
    """The capacity label of a trial's config (keys it does not search: the params values)."""
    return capacity_label(
        config.get("model.arch", params.model.arch),
        int(config.get("model.width", params.model.width)),
    )


def measure_epoch_seconds(
    params: Params, meta: Any, dimensions: dict[str, Any], steps_per_epoch: int, threads: int
) -> dict[str, float]:
    """Seconds of one training epoch for every capacity the space can pick ("cnn/32": 2.9).

    Timed here, on the GPU when trials get one (`tune.gpus_per_trial`) and this machine has it;
    on a cluster whose workers differ from this machine the estimate is off by their speed
    ratio, and Ray's hard stop bounds the search.
    """
    import torch

    from tasks.core.config import with_overrides
    from tasks.modeling.fit import make_module

    gpu = params.tune.gpus_per_trial > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    seconds = {}
    try:
        for overrides in capacities(params, dimensions):
            trial = with_overrides(params, {**overrides, "model.pretrained": None})
            module = make_module(trial, meta).to(device)
            step = _step_seconds(module, trial, meta, device)
            label = capacity_label(overrides["model.arch"], overrides["model.width"])
            seconds[label] = step * steps_per_epoch * EPOCH_OVERHEAD
    finally:
        torch.set_num_threads(previous)
    return seconds


def _step_seconds(module: Any, params: Params, meta: Any, device: Any) -> float:
    """Median seconds of one optimizer step (augment, forward, backward, update) on a batch."""
    import torch

    batch = params.train.batch_size
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (batch, meta.channels, meta.image_size, meta.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8).to(device)
    labels = torch.randint(0, len(meta.classes), (batch,)).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=params.train.lr)
    module.train()
    times = []
    for step in range(TIMED_STEPS + 1):  # the first step warms up the allocator
        start = time.perf_counter()
        scaled = module.preprocessing.scale(images)
        if module.augment is not None:
            scaled = module.augment(scaled, generator)
        loss = module.loss(module(module.preprocessing.normalize(scaled)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
