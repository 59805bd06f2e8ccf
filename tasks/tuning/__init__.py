"""Tuning: the Ray Tune search space, searcher, trainable, runtime and reports."""
