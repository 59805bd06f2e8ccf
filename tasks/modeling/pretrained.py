"""Pretrained weights: read a state dict from a path or URI (never unpickling code), fit it to
the configured network (adapting the stem to other channels and kernel sizes) and load it.

Weights are safetensors, or a `.pt` read with ``torch.load(weights_only=True)``; a local path or
an ``s3://`` URI (credentials from the environment). A mismatch names every layer concerned.
"""

from __future__ import annotations

import io
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasks.core.errors import UserError
from tasks.core.io import filesystem_for, is_remote, strip_protocol


class PretrainedMismatch(UserError, ValueError):
    """The pretrained weights do not fit the configured architecture."""


def read_state_dict(
    uri: str, storage_options: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Read a state dict from a path or URI: safetensors, or a .pt read with weights_only=True."""
    from safetensors.torch import load as load_safetensors

    filesystem = filesystem_for(uri, storage_options)
    path = strip_protocol(uri) if is_remote(uri) else uri
    if not filesystem.exists(path):
        raise PretrainedMismatch(f"model.pretrained: {uri!r} does not exist")
    with filesystem.open(path, "rb") as handle:
        payload = handle.read()
    if uri.endswith(".safetensors"):
        try:
            state = load_safetensors(payload)
        except Exception as error:
            raise PretrainedMismatch(
                f"model.pretrained: {uri!r} is not a readable safetensors file "
                f"({type(error).__name__}: {error})"
            ) from None
    else:
        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as error:
            raise PretrainedMismatch(
                f"model.pretrained: {uri!r} is not a safetensors file nor a state dict that "
                f"torch.load(weights_only=True) accepts ({type(error).__name__}: {error})"
            ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedMismatch(f"model.pretrained: {uri!r} does not hold a state dict of tensors")
    for prefix in ("network.", "module.", "model."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key.removeprefix(prefix): value for key, value in state.items()}
    return state


def _adapt_stem(weight: torch.Tensor, target_shape: torch.Size) -> torch.Tensor:
    """Fit a pretrained first conv to another channel count and kernel size."""
    out_channels, in_channels, height, width = target_shape
    if weight.shape[0] != out_channels:
        return weight  # not adaptable; reported as a mismatch
    if weight.shape[1] != in_channels:
        if in_channels == 1:
            weight = weight.sum(dim=1, keepdim=True)  # grayscale: sum the colour filters
        else:
            weight = weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
    if weight.shape[2:] != (height, width):
        scale = (weight.shape[2] * weight.shape[3]) / (height * width)
        weight = F.interpolate(weight, size=(height, width), mode="bilinear", align_corners=False)
        weight = weight * scale
    return weight


def load_pretrained(network: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load `state` into `network`'s backbone; the head stays new.

    Returns the names of the layers that were adapted. Raises PretrainedMismatch naming every
    layer that is missing, unexpected or of the wrong shape.
    """
    own = network.state_dict()
    stem, head = network.stem_key, network.head_prefix
    wanted = {k: v for k, v in own.items() if not k.startswith(head)}
    given = {k: v for k, v in state.items() if not k.startswith(head)}
    adapted = []
    if stem in given and stem in wanted and given[stem].shape != wanted[stem].shape:
        given[stem] = _adapt_stem(given[stem], wanted[stem].shape)
        adapted.append(stem)

    # BatchNorm's step counter is bookkeeping, absent from older checkpoints (torchvision's V1
    # ImageNet weights): never a mismatch on its own
    def counts(key: str) -> bool:
        return not key.endswith("num_batches_tracked")

    missing = sorted(filter(counts, set(wanted) - set(given)))
    unexpected = sorted(filter(counts, set(given) - set(wanted)))
    wrong_shape = [
        f"{k} {tuple(given[k].shape)} vs {tuple(wanted[k].shape)}"
        for k in sorted(set(wanted) & set(given))
        if given[k].shape != wanted[k].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        for title, names in (
            ("shape", wrong_shape),
            ("missing", missing),
            ("unexpected", unexpected),
        ):
            if names:
                shown = ", ".join(names[:5]) + (
                    f" (+{len(names) - 5} more)" if len(names) > 5 else ""
                )
                problems.append(f"{title}: {shown}")
        raise PretrainedMismatch(
            f"model.pretrained: {source!r} does not fit this architecture; " + "; ".join(problems)
        )
    network.load_state_dict({**own, **{k: v for k, v in given.items() if k in wanted}})
    return adapted
