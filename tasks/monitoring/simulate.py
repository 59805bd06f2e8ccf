"""Drift on purpose: labelled batches of the project's own images, changed the way real data
drifts (a new scanner inverts the polarity, pens get thicker, images arrive rotated or noisy).

``python -m tasks.monitoring.simulate --kind invert --splits train,val --out DIR`` writes the
validated images of the named splits (data/splits/split.csv, files under data/raw/files), each
changed by `kind`, as PNG files in the class-folder layout (``DIR/<label>/<file>.png``): a batch
`flows/continual.py` can learn from and requests `make drift-demo` can send. ``--kind none``
copies them unchanged (a clean batch). Seeded: the same arguments write the same bytes.

Which splits to draw from matters for an honest demo: a drifted copy of an old *test* image
that the challenger trains on would make the old test split a leaky judge of forgetting, so the
demo draws its drifted batch from the train and validation splits; its clean traffic is the
validation split (the monitor's reference is the champion's test images: clean traffic must be
other images), and a clean copy of the test split measures accuracy only.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from tasks.core.errors import UserError, shown
from tasks.core.layout import Layout
from tasks.core.options import parse_options
from tasks.core.runner import print_help, stage_main, usage_error, wants_help

MODULE = "tasks.monitoring.simulate"
ROTATION_DEGREES = 40  # far outside augment.rotation (12): a sideways scan, not a tilt
NOISE_STD = 48  # grey levels: a noisy sensor, well beyond augment.noise_std (0.02 = 5 levels)


def _invert(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image)
    return Image.fromarray((255 - pixels).astype(np.uint8), mode=image.mode)


def _rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = float(rng.choice([-1, 1]) * rng.uniform(0.75, 1.0) * ROTATION_DEGREES)
    return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)


def _thicken(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.MaxFilter(3))  # every stroke one pixel wider on each side


def _noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image).astype(np.float64)
    noisy = pixels + rng.normal(0.0, NOISE_STD, size=pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8), mode=image.mode)


def _unchanged(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image


DRIFTS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "invert": _invert,
    "rotate": _rotate,
    "thicken": _thicken,
    "noise": _noise,
    "none": _unchanged,
}
SPLITS = ("train", "val", "test")


def drifted(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """`image` changed by `kind` (one of :data:`DRIFTS`), in its own mode (L or RGB)."""
    if kind not in DRIFTS:
        raise UserError(f"drift kind {kind!r} is unknown; choose one of {', '.join(DRIFTS)}")
    return DRIFTS[kind](image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode), rng)


def write_batch(
    layout: Layout, kind: str, splits: Sequence[str], out: Path, seed: int
) -> dict[str, int]:
    """Write the images of `splits`, changed by `kind`, under `out/<label>/`; counts per label.

    Raises:
        UserError: no split file (run the pipeline first), an unknown split or kind, or `out`
            is not empty (a batch is never mixed with another).
    """
    if kind not in DRIFTS:
        raise UserError(f"drift kind {kind!r} is unknown; choose one of {', '.join(DRIFTS)}")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise UserError(f"splits must be among {', '.join(SPLITS)}, got {list(splits)}")
    split_file = layout.split_file
    if not split_file.exists():
        raise UserError(f"{shown(split_file)} does not exist; run the pipeline first (make run)")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{shown(out)} is not empty; name a new folder for the batch")
    table = pd.read_csv(split_file, dtype=str, keep_default_na=False)
    chosen = table[table["split"].isin(splits)].sort_values("path")
    files = layout.raw_files
    rng = np.random.default_rng(seed)
    counts: Counter[str] = Counter()
    for path, label in zip(chosen["path"], chosen["label"], strict=True):
        with Image.open(files / path) as source:
            image = drifted(source, kind, rng)
        target = out / label / f"{kind}-{Path(path).stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, format="PNG")
        counts[label] += 1
    return dict(sorted(counts.items()))


OPTIONS = {
    "--kind KIND": f"the drift: {', '.join(DRIFTS)} (none: unchanged copies)",
    "--splits LIST": "comma-separated splits to draw from (default train,val)",
    "--out DIR": "where to write the batch (class folders; must be new or empty)",
}
USAGE = f"usage: python -m {MODULE} [-h] --kind KIND --out DIR [--splits LIST]"


def parse_arguments(arguments: Sequence[str]) -> tuple[str, list[str], Path]:
    values = parse_options(arguments, USAGE, valued=("--kind", "--splits", "--out"))
    for required in ("--kind", "--out"):
        if required not in values:
            usage_error(USAGE, f"{required} is required")
    splits_text = str(values.get("--splits", "train,val"))
    splits = [name.strip() for name in splits_text.split(",") if name.strip()]
    return str(values["--kind"]), splits, Path(str(values["--out"])).resolve()


def main(arguments: Sequence[str] | None = None) -> None:
    arguments = sys.argv[1:] if arguments is None else arguments
    if wants_help(arguments):
        lines = [USAGE, "", " ".join((__doc__ or "").split("\n\n")[1].split()), "", "options:"]
        lines += [f"  {flag:<16}{text}" for flag, text in OPTIONS.items()]
        print_help("\n".join(lines))
    kind, splits, out = parse_arguments(arguments)

    def work() -> None:
        from tasks.core.config import load_params_or_exit

        layout = Layout.discover()
        seed = load_params_or_exit(layout.params_file).seed
        counts = write_batch(layout, kind, splits, out, seed)
        total = sum(counts.values())
        print(f"simulate: {total} {kind} images of {'+'.join(splits)} in {shown(out)}")

    stage_main(work, argv=[])


if __name__ == "__main__":
    main()
