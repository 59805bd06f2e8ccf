"""The network's embedding: the penultimate layer's activations, the input of its classification
head (`network.head_prefix` names the head in every network of the zoo: CompactCNN's pooled
features, a ResNet's pooled `fc` input).

One definition for the two places that need it, so they cannot disagree: the exported ONNX
graph's `embedding` output (`tasks.compression.export`), which the service logs, and the drift
monitor's reference embeddings (`tasks.monitoring.reference`). The embedding is computed by the
network with its head replaced by nn.Identity, and the logits by the head applied to it: the same
numbers as the network's own forward pass, with no hook (which the ONNX exporter cannot trace).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from tasks.modeling.preprocessing import Preprocessing


def head_name(network: nn.Module) -> str:
    """The dotted name of the classification head (`head_prefix` without its trailing dot)."""
    return network.head_prefix.rstrip(".")


class EmbeddingNetwork(nn.Module):
    """network -> (logits, embedding): the backbone shares every parameter and buffer with
    `network` (a copy of the module tree only, with the head replaced by nn.Identity), so later
    changes to `network`'s weights show here too."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        shared = {id(tensor): tensor for tensor in (*network.parameters(), *network.buffers())}
        backbone = copy.deepcopy(network, memo=shared)  # new modules, the same tensors
        backbone.set_submodule(head_name(network), nn.Identity())
        self.backbone = backbone
        self.head = network.get_submodule(head_name(network))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.backbone(images).flatten(1)
        return self.head(embedding), embedding


@torch.no_grad()
def embed(
    network: nn.Module, preprocessing: Preprocessing, images: np.ndarray, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N, D) and class probabilities (N, classes) of uint8 (N, C, H, W) images, from
    one forward pass in eval mode."""
    network.eval()
    model = EmbeddingNetwork(network).eval()
    logits, embeddings = [], []
    for start in range(0, len(images), batch_size):
        batch_logits, batch_embeddings = model(preprocessing(images[start : start + batch_size]))
        logits.append(batch_logits)
        embeddings.append(batch_embeddings)
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    probabilities = torch.softmax(torch.cat(logits), dim=1)
    return torch.cat(embeddings).numpy(), probabilities.numpy()
