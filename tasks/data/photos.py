"""A photo-like data set built from photographs that ship inside installed packages.

Run with ``python -m tasks.data.photos OUT`` (or ``make photos``): it writes a class-folder tree,
``OUT/<class>/<n>.png|jpg``, that ``data.source`` can point at. Nothing is downloaded.

What a user's own photographs look like, and the digits do not: each class is one region of a
photograph (14 regions picked by content from scikit-learn's two sample photos and matplotlib's
portrait of Grace Hopper: sky, roof, trees, lake, petals, stars, stripes, face, ...); each image a square patch of 24-64 px cut from a random place inside its
region, so images of a class share texture and colour but never a layout. Then, per image and
seeded:

- a quarter turn 0-3 times (photos arrive rotated; a texture has no upright);
- a mirror half of the time;
- brightness and contrast each scaled by a factor in [0.7, 1.3] (exposure varies);
- grayscale for half of the images (colour informs, but not always);
- saved as JPEG (quality 70-95) for a third of them, as PNG otherwise.

It is the subject of ``benchmarks/photo_search.py`` (the default search against a hand sweep).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

# the classes: a region (left, top, right, bottom, in pixels) of a photograph that ships with an
# installed package: scikit-learn's china.jpg and flower.jpg (640 x 427), matplotlib's
# grace_hopper.jpg (512 x 600). Regions are picked by content, so that two classes never share
# one (a grid would make "sky" and "more sky" two classes); every side is at least MAX_PATCH.
REGIONS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "china_sky": ("china.jpg", (331, 0, 640, 126)),
    "china_roof": ("china.jpg", (97, 60, 320, 130)),
    "china_pagoda": ("china.jpg", (69, 137, 354, 343)),
    "china_trees": ("china.jpg", (330, 320, 540, 427)),
    "china_tree_right": ("china.jpg", (549, 137, 640, 427)),
    "china_lake": ("china.jpg", (343, 200, 549, 297)),
    "flower_petals": ("flower.jpg", (200, 110, 420, 330)),
    "flower_background": ("flower.jpg", (0, 0, 160, 427)),
    "hopper_stars": ("grace_hopper.jpg", (0, 0, 137, 297)),
    "hopper_stripes": ("grace_hopper.jpg", (0, 300, 68, 570)),
    "hopper_backdrop": ("grace_hopper.jpg", (390, 0, 512, 300)),
    "hopper_hat": ("grace_hopper.jpg", (149, 23, 377, 149)),
    "hopper_face": ("grace_hopper.jpg", (160, 160, 366, 331)),
    "hopper_uniform": ("grace_hopper.jpg", (140, 400, 512, 600)),
}
MIN_PATCH, MAX_PATCH = 24, 64


def photographs() -> dict[str, np.ndarray]:
    """The bundled sample photographs (RGB arrays), by file name."""
    import matplotlib.cbook
    from sklearn.datasets import load_sample_images

    bundle = load_sample_images()
    photos = {
        Path(name).name: image for name, image in zip(bundle.filenames, bundle.images, strict=True)
    }
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as hopper:
        photos["grace_hopper.jpg"] = np.asarray(hopper.convert("RGB"))
    return photos


def regions() -> list[tuple[str, np.ndarray]]:
    """The classes: (name, pixels of its region)."""
    photos = photographs()
    cells = []
    for label, (name, (left, top, right, bottom)) in REGIONS.items():
        cells.append((label, photos[name][top:bottom, left:right]))
    return cells


def patch(region: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One image of a class: a patch of `region`, turned, lit and coloured; and its file format."""
    size = int(rng.integers(MIN_PATCH, MAX_PATCH + 1))
    top = int(rng.integers(0, region.shape[0] - size + 1))
    left = int(rng.integers(0, region.shape[1] - size + 1))
    image = Image.fromarray(region[top : top + size, left : left + size])
    image = image.rotate(90 * int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.7, 1.3)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.7, 1.3)))
    if rng.random() < 0.5:
        image = image.convert("L")
    return image, ("jpg" if rng.random() < 1 / 3 else "png")


def write_photo_patches(out: Path, per_class: int = 60, seed: int = 0) -> dict[str, int]:
    """Write `per_class` images of every class under `out`; the count per class."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    counts = {}
    for label, region in regions():
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image, fmt = patch(region, rng)
            if fmt == "jpg":
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
                (folder / f"{index:04d}.jpg").write_bytes(buffer.getvalue())
            else:
                image.save(folder / f"{index:04d}.png")
        counts[label] = per_class
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.data.photos",
        description="Write a photo-like class-folder data set (14 classes of photo patches).",
    )
    parser.add_argument("out", type=Path, help="folder to write (OUT/<class>/<n>.png|jpg)")
    parser.add_argument("--per-class", type=int, default=60, help="images per class (60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (0)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.exit(2, f"photos: {args.out} exists and is not empty; choose another folder\n")
    counts = write_photo_patches(args.out, args.per_class, args.seed)
    print(
        f"photos: {sum(counts.values())} images in {len(counts)} classes -> {args.out} "
        f"(set data.source: {args.out} and data.image_size: 24)"
    )


if __name__ == "__main__":
    main()
