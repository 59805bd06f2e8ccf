"""The model zoo: plain nn.Modules, no Lightning (pretrained weights: `tasks.modeling.pretrained`).

- ``cnn``: a compact CNN sized for small images (the default).
- ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision's ResNets, adapted to `data.channels`
  and, for images of 64 px or less, given a 3x3 stride-1 stem without max-pooling so an 8-32 px
  image is not reduced to one pixel before the first residual block.

Every network names its classification head (`head_prefix`) and its first convolution
(`stem_key`), which is how pretrained weights and a frozen backbone find them.
"""

from __future__ import annotations

import torch
from torch import nn

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


def backbone_modules(network: nn.Module, head_prefix: str | None = None) -> list[nn.Module]:
    """The largest submodules of `network` that hold nothing of its classification head."""
    head = network.head_prefix if head_prefix is None else head_prefix
    modules: list[nn.Module] = []
    for name, child in network.named_children():
        if head == f"{name}.":
            continue
        if head.startswith(f"{name}."):  # a parent of the head: look inside it
            modules += backbone_modules(child, head.removeprefix(f"{name}."))
        else:
            modules.append(child)
    return modules


def set_backbone_trainable(network: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything outside the classification head.

    Frozen means no gradients and eval mode: BatchNorm then normalizes with the running statistics
    it was given instead of updating them from each batch, so a frozen backbone changes in no
    parameter and no buffer (a linear probe is one). Unfreezing puts it back in train mode.
    """
    for name, parameter in network.named_parameters():
        if not name.startswith(network.head_prefix):
            parameter.requires_grad_(trainable)
    for module in backbone_modules(network):
        module.train(trainable)
