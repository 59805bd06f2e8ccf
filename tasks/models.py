"""Saving and loading the exported model: `models/model.safetensors` + `models/model.json`.

Weights are stored as safetensors, never pickled; `model.json` carries everything a later stage
or the service needs to rebuild the network and preprocess an image the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tasks.config import Params
from tasks.datasets import require
from tasks.io import read_json, write_json
from tasks.networks import build_network

MODEL_DIR = Path("models")


def params_hash(params: Params) -> str:
    canonical = json.dumps(params.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def save_model(
    network: nn.Module, meta: dict[str, Any], params: Params, out: Path = MODEL_DIR
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()
    }
    save_file(state, str(out / "model.safetensors"))
    write_json(
        out / "model.json",
        {
            "arch": params.model.arch,
            "width": params.model.width,
            "dropout": params.model.dropout,
            "classes": meta["classes"],
            "image_size": meta["image_size"],
            "channels": meta["channels"],
            "normalization": {"mean": meta["mean"], "std": meta["std"]},
            "params_hash": params_hash(params),
        },
    )


def load_model(directory: Path = MODEL_DIR) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from model.json and load its safetensors weights (eval mode)."""
    require(directory / "model.json", directory / "model.safetensors")
    info = read_json(directory / "model.json")
    network = build_network(
        info["arch"],
        info["channels"],
        len(info["classes"]),
        info["width"],
        info["dropout"],
        info["image_size"],
    )
    network.load_state_dict(load_file(str(directory / "model.safetensors")))
    return network.eval(), info


def normalize(
    images: np.ndarray | torch.Tensor, mean: list[float], std: list[float]
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 normalized with the train split's statistics."""
    tensor = torch.as_tensor(images).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (tensor - mean_t) / std_t


@torch.no_grad()
def predict(network: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Class probabilities for normalized images, in batches."""
    network.eval()
    outputs = [
        torch.softmax(network(images[i : i + batch_size]), dim=1)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, 0), dtype=np.float32)
