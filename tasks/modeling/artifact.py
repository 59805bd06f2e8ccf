"""The exported model: `models/model.safetensors` (weights) + `models/model.json` (its card).

Weights are stored as safetensors, never pickled. The card (:class:`ModelCard`, versioned) holds
everything a later stage or the service needs to rebuild the network and to preprocess an image
exactly as in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from tasks.core.config import Params
from tasks.core.contracts import VersionedFile
from tasks.core.errors import require
from tasks.core.fingerprint import params_fingerprint
from tasks.data.packed import PackedMeta
from tasks.modeling.networks import build_network
from tasks.modeling.preprocessing import Preprocessing

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"


class Normalization(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: list[float]
    std: list[float]


class ModelCard(VersionedFile):
    """`models/model.json`: the architecture, the classes and the preprocessing of a model."""

    PRODUCER: ClassVar[str] = "the train stage"

    arch: str
    width: int
    dropout: float
    classes: list[str] = Field(min_length=2)
    image_size: int
    channels: int
    normalization: Normalization
    params_fingerprint: str  # of the params it was trained with (tuned values applied)

    @classmethod
    def for_training(cls, params: Params, meta: PackedMeta) -> ModelCard:
        return cls.create(
            arch=params.model.arch,
            width=params.model.width,
            dropout=params.model.dropout,
            classes=meta.classes,
            image_size=meta.image_size,
            channels=meta.channels,
            normalization=Normalization(mean=meta.mean, std=meta.std),
            params_fingerprint=params_fingerprint(params),
        )

    def preprocessing(self) -> Preprocessing:
        norm = self.normalization
        return Preprocessing(self.image_size, self.channels, norm.mean, norm.std)

    def build_network(self) -> nn.Module:
        return build_network(
            self.arch, self.channels, len(self.classes), self.width, self.dropout, self.image_size
        )


def save_model(network: nn.Module, card: ModelCard, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()
    }
    save_file(state, str(directory / WEIGHTS_FILE))
    card.save(directory / CARD_FILE)


def load_model(directory: Path) -> tuple[nn.Module, ModelCard]:
    """Rebuild the network from its card and load its safetensors weights (eval mode)."""
    require(directory / CARD_FILE, directory / WEIGHTS_FILE)
    card = ModelCard.load(directory / CARD_FILE)
    network = card.build_network()
    network.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return network.eval(), card


@torch.no_grad()
def predict(
    network: nn.Module, preprocessing: Preprocessing, images: np.ndarray, batch_size: int = 512
) -> np.ndarray:
    """Class probabilities for uint8 (N, C, H, W) images, preprocessed and run in batches."""
    network.eval()
    outputs = [
        torch.softmax(network(preprocessing(images[i : i + batch_size])), dim=1)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, 0), dtype=np.float32)
