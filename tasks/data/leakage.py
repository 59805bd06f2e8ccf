"""Near-duplicate leakage across splits: perceptual hashes and a bounded-memory pair count."""

from __future__ import annotations

import numpy as np


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """64-bit perceptual hash (DCT, imagehash.phash) of each (C, H, W) uint8 image."""
    import imagehash
    from PIL import Image

    hashes = np.zeros(len(images), dtype=np.uint64)
    for index, image in enumerate(images):
        gray = image.mean(axis=0).astype(np.uint8)
        bits = imagehash.phash(Image.fromarray(gray, mode="L")).hash.flatten()
        hashes[index] = np.packbits(bits).view(">u8")[0]
    return hashes


def near_duplicates_across(
    hashes: np.ndarray,
    splits: np.ndarray,
    max_distance: int,
    examples: int = 20,
    block: int = 256,
) -> tuple[int, list[tuple[int, int, int]]]:
    """Count pairs (i < j) in different splits whose hashes differ by <= max_distance bits.

    Returns the count and the first `examples` pairs as (i, j, distance). Memory stays bounded:
    distance 0 groups equal hashes (linear); otherwise `block` rows at a time are compared with
    the rows after them, XOR plus popcount on uint64 (about block x N x 9 bytes at once).
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    split_codes = np.unique(np.asarray(splits), return_inverse=True)[1]
    count, found = 0, []
    if max_distance == 0:
        order = np.argsort(hashes, kind="stable")
        sorted_hashes = hashes[order]
        boundaries = np.flatnonzero(np.diff(sorted_hashes)) + 1
        for members in np.split(order, boundaries):
            if len(members) < 2 or len(np.unique(split_codes[members])) < 2:
                continue
            members = np.sort(members)
            codes = split_codes[members]
            # pairs in different splits = all pairs - pairs within each split
            sizes = np.bincount(codes)
            count += len(members) * (len(members) - 1) // 2 - int((sizes * (sizes - 1) // 2).sum())
            for a in range(len(members)):
                for b in range(a + 1, len(members)):
                    if len(found) >= examples:
                        break
                    if codes[a] != codes[b]:
                        found.append((int(members[a]), int(members[b]), 0))
        return count, found
    for start in range(0, len(hashes), block):
        rows = hashes[start : start + block]
        distance = np.bitwise_count(np.bitwise_xor(rows[:, None], hashes[None, start:]))
        close = distance <= max_distance
        close &= split_codes[start : start + block, None] != split_codes[None, start:]
        close &= np.triu(np.ones(close.shape, dtype=bool), k=1)  # each pair once, i < j
        row_index, col_index = np.nonzero(close)
        count += len(row_index)
        for row, col in zip(row_index, col_index, strict=True):
            if len(found) >= examples:
                break
            found.append((int(row + start), int(col + start), int(distance[row, col])))
    return count, found
