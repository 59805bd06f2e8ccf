"""Modeling: networks, pretrained weights, preprocessing, the model artifact, fitting."""
