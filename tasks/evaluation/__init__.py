"""Measuring a model on held-out data: metrics with their uncertainty, calibration, plots."""
