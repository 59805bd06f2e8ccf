"""The BentoML service (`service.py`, built into a bento by `bentofile.yaml`)."""
