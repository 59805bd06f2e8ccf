"""Explanations of a trained classifier: Captum attributions, their randomization check, grids.

Used by the explain stage (`tasks/explain.py`) and by the service's overlay endpoint
(:func:`tasks.explaining.grids.overlay_png`).
"""
