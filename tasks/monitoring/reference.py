"""The reference: what the champion's data looked like, for the drift tests to compare with.

- Image statistics: of `monitor.reference_images` train images drawn with `params.seed`, read
  from data/validated/manifest.csv. The service logs the mean and std of the decoded upload at
  its own size (`tasks.serving.uploads.decode_image`: `load_converted`, then mean and std of the
  converted 0-255 pixels) and its width and height, all before the image is resized to the
  model's input. The validate stage computed exactly these numbers, with the same function, for
  every raw file it accepted, so its manifest is what is comparable. The packed arrays are not:
  they are resized to `data.image_size` (the 8 px digits become 16 px, and interpolation changes
  their mean and std), and re-decoding data/raw would only recompute the manifest's numbers.
- Embeddings: the penultimate layer's activations (the input of the classification head,
  `tasks.modeling.embedding`) on the same train images, from the packed split (the model's
  input, exactly what the service gives the network for those files).
- Predicted labels and confidences: the champion's on the test set it was registered with
  (models/registry/<id>/test.npz): held out, so the confidence is that of unseen images, as the
  served ones are.

The model side comes from the champion's served ONNX file (`served_onnx`, int8 when the
compress stage chose it): the file the service runs and whose outputs it logs, so like is
compared with like. Measured on the digits champion (CNN, 128 dimensions, values up to 4.3):
int8 embeddings differ from the torch network's by up to 0.047; 500 train images against the
270 held-out test images served through int8 (logged, rounded) give MMD p = 0.61 with this
reference and p = 0.60 with a torch one, so int8 alone would not have shown as drift either;
the same test images inverted give p = 0.005, the smallest 200 permutations can give.
A champion exported before the embedding
output has none: its reference has no embeddings and the MMD test is skipped, as the log it
serves carries none either.

onnxruntime and numpy only (no torch); `tasks.monitoring.drift` gets plain arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.compression.runtime import OnnxClassifier
from tasks.core.config_release import MonitorConfig
from tasks.core.errors import UserError, require, shown
from tasks.core.layout import Layout
from tasks.data.packed import load_split
from tasks.monitoring.drift import IMAGE_FEATURES, Sample
from tasks.registry.store import champion, load_test_set


@dataclass(frozen=True)
class Reference:
    """The reference sample and what it was made from."""

    sample: Sample
    classes: list[str]
    champion: str  # the champion's registry id: the model_version its served records carry
    train_images: int  # images behind the statistics and the embeddings
    test_images: int  # images behind the labels and the confidences


def train_rows(layout: Layout) -> pd.DataFrame:
    """The train split's rows in the packed order (data/splits/split.csv lists them in the order
    the split stage packed them), with the validate stage's statistics of each file."""
    require(layout.split_file, layout.validated_manifest)
    splits = pd.read_csv(layout.split_file, dtype=str, keep_default_na=False)
    statistics = pd.read_csv(
        layout.validated_manifest,
        usecols=["path", *IMAGE_FEATURES],
        dtype={"path": str},
        keep_default_na=False,
    )
    train = splits.loc[splits["split"] == "train", ["path"]].reset_index(drop=True)
    rows = train.merge(statistics, on="path", how="left", validate="one_to_one")
    if rows[list(IMAGE_FEATURES)].isna().any().any():
        raise UserError(
            f"{shown(layout.split_file)} lists train files that {shown(layout.validated_manifest)}"
            " does not; rerun the pipeline (`dvc repro`)"
        )
    return rows


def build_reference(layout: Layout, config: MonitorConfig, seed: int) -> Reference:
    """The champion's reference (see the module docstring).

    Raises:
        NoChampion: the registry has none yet.
        MissingInput: the split, the manifest or the packed train split is missing.
        UserError: they disagree (a pipeline run stopped half-way).
    """
    files = champion(layout.registry_dir)
    served = OnnxClassifier(files.served_onnx)
    rows = train_rows(layout)
    train_images, _ = load_split("train", layout.packed_dir)
    if len(train_images) != len(rows):
        raise UserError(
            f"the packed train split holds {len(train_images)} images, "
            f"{shown(layout.split_file)} {len(rows)}; rerun the pipeline (`dvc repro`)"
        )
    generator = np.random.default_rng(seed)
    count = min(config.reference_images, len(rows))
    chosen = np.sort(generator.choice(len(rows), count, replace=False))
    _, embeddings = served.outputs(train_images[chosen])
    test_images, _ = load_test_set(files.test_set)
    probabilities = served.probabilities(test_images)
    classes = list(served.classes)
    sample = Sample(
        features={name: rows[name].to_numpy(np.float64)[chosen] for name in IMAGE_FEATURES},
        labels=np.array(classes, dtype=str)[probabilities.argmax(axis=1)],
        confidences=probabilities.max(axis=1).astype(np.float64),
        embeddings=None if embeddings is None else embeddings.astype(np.float64),
    )
    return Reference(sample, classes, files.entry.id, count, len(test_images))
