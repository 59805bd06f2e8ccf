"""The model zoo (plain nn.Module, no Lightning) and loading pretrained weights into it.

- ``cnn``: a compact CNN sized for small images (the default).
- ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision's ResNets, adapted to `data.channels`
  and, for images of 64 px or less, given a 3x3 stride-1 stem without max-pooling so an 8-32 px
  image is not reduced to one pixel before the first residual block.

Pretrained weights (`model.pretrained`) are read from a local path or a URI (s3://...) as
safetensors, or as a `.pt`/`.pth` state dict loaded with ``torch.load(weights_only=True)``;
nothing executable is unpickled. The classification head is always new (the number of classes
differs); a stem with another channel count or kernel size is adapted (channels summed or
repeated, kernel resized). Any other layer that does not fit is an error that names it.
"""

from __future__ import annotations

import io
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasks.cli import UserError

SMALL_INPUT = 64  # images up to this size get the small-image ResNet stem


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class CompactCNN(nn.Module):
    """A small VGG-style CNN for small images (8 to 64 px): three stages, global average pool.

    Global pooling makes it independent of the input size; about 0.14M parameters at width 32.
    """

    stem_key = "features.0.0.weight"
    head_prefix = "head."

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(in_channels, width),
            _conv_block(width, width),
            nn.MaxPool2d(2),
            _conv_block(width, 2 * width),
            _conv_block(2 * width, 2 * width),
            nn.MaxPool2d(2),
            _conv_block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def resnet(
    depth: int, in_channels: int, num_classes: int, dropout: float, image_size: int
) -> nn.Module:
    """A torchvision ResNet with its stem adapted to the channels and size of the images.

    Parameter names stay torchvision's (conv1, bn1, layer1..4), so torchvision's ImageNet state
    dicts load directly; the head `fc` becomes dropout + linear.
    """
    import torchvision

    factory = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34}
    factory[50] = torchvision.models.resnet50
    network = factory[depth](weights=None)  # never downloads: weights come from model.pretrained
    if image_size <= SMALL_INPUT:
        network.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        network.maxpool = nn.Identity()
    elif in_channels != 3:
        network.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    features = network.fc.in_features
    network.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))
    network.stem_key = "conv1.weight"
    network.head_prefix = "fc."
    return network


def build_network(
    arch: str,
    in_channels: int,
    num_classes: int,
    width: int = 32,
    dropout: float = 0.2,
    image_size: int = 32,
) -> nn.Module:
    if arch == "cnn":
        return CompactCNN(in_channels, num_classes, width=width, dropout=dropout)
    if arch in {"resnet18", "resnet34", "resnet50"}:
        return resnet(
            int(arch.removeprefix("resnet")), in_channels, num_classes, dropout, image_size
        )
    raise ValueError(f"model.arch must be one of cnn, resnet18, resnet34, resnet50; got {arch!r}")


def head_parameters(network: nn.Module) -> list[str]:
    """Names of the parameters of the classification head (trained from scratch)."""
    prefix = network.head_prefix
    return [name for name, _ in network.named_parameters() if name.startswith(prefix)]


def set_backbone_trainable(network: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze every parameter outside the classification head."""
    for name, parameter in network.named_parameters():
        if not name.startswith(network.head_prefix):
            parameter.requires_grad_(trainable)


# --------------------------------------------------------------------------- pretrained weights


class PretrainedMismatch(UserError, ValueError):
    """The pretrained weights do not fit the configured architecture."""


def read_state_dict(
    uri: str, storage_options: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Read a state dict from a path or URI: safetensors, or a .pt read with weights_only=True."""
    from safetensors.torch import load as load_safetensors

    from tasks.io import filesystem_for, is_remote, strip_protocol

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
