"""Latency per image of several models, measured side by side in one process.

Each model is timed in short blocks of consecutive runs (`BLOCK_RUNS`), after warm-up runs of
its own, and the blocks take turns (A, B, C, A, B, C, ...): a burst of load from another process
on a shared machine falls on all of them alike, and no timed run follows another model's run.
Measured on the digits CNN (2 cores, batch 32): interleaving single runs made torch up to 8x
slower right after an onnxruntime run (ORT's idle pool threads spin-wait, and so do torch's
OpenMP threads), a ratio of 0.06 instead of 0.21; turning ORT's spinning off slowed ORT fp32 2x.
The median of the timed runs is reported, per image (batch time / batch size).

On a machine that other processes load, torch suffers most when it has a thread per core (its
OpenMP threads wait for each other at every operator): digits CNN, batch 32, 2 cores, another
job running: torch 1.3-1.9 ms/image with 2 threads, 0.19 with 1 (quiet: 0.11-0.18 with 2), ONNX
int8 0.046-0.05 either way. Compare figures from a quiet machine, or set `compress.threads`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

Runner = Callable[[np.ndarray], Any]
WARM_UP_RUNS = 3  # first runs of a block allocate buffers, pick kernels, wake threads: untimed
BLOCK_RUNS = 5


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_runner(module: nn.Module) -> Runner:
    """A batch of uint8 images through `module` as a competent user runs it: eval mode, under
    torch.inference_mode (no autograd bookkeeping)."""
    module.eval()

    def run(images: np.ndarray) -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(images))

    return run


def batch_of(images: np.ndarray, batch_size: int) -> np.ndarray:
    """The first `batch_size` images, repeated when there are fewer (a tiny test split)."""
    if len(images) == 0:
        raise ValueError("latency: no images to time")
    return np.ascontiguousarray(images[np.arange(batch_size) % len(images)])


def latency_ms_per_image(
    runners: dict[str, Runner], images: np.ndarray, batch_size: int, repeats: int
) -> dict[str, float]:
    """Median milliseconds per image of each runner over `repeats` timed runs on one batch of
    `batch_size` images (in blocks of `BLOCK_RUNS`, taking turns: see the module docstring)."""
    batch = batch_of(images, batch_size)
    full, rest = divmod(repeats, BLOCK_RUNS)
    blocks = [BLOCK_RUNS] * full + ([rest] if rest else [])
    times: dict[str, list[float]] = {name: [] for name in runners}
    for block in blocks:
        for name, run in runners.items():
            for _ in range(WARM_UP_RUNS):
                run(batch)
            for _ in range(block):
                start = time.perf_counter()
                run(batch)
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(runs) / batch_size for name, runs in times.items()}
