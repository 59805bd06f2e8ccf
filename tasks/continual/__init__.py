"""Continual learning: a new labelled batch becomes a data version that fine-tunes the champion."""
