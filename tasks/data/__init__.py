"""Data: sources, safe decoding, splitting, leakage checks, augmentation, packed arrays."""
