"""Torch-free basics every stage and flow may use: nothing here imports torch or lightning."""
