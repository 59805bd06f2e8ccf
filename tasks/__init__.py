"""sixfold's pipeline code.

`tasks/<stage>.py` is the entry module of one DVC stage (``python -m tasks.<stage>``) and a
leaf: nothing imports it. Everything shared lives in the library packages beside them, each
allowed to import only the ones listed before it:

- `tasks.core`: torch-free basics: errors, the stage runner and exit codes, the typed config,
  the repository layout, file io, fingerprints and resume state, plotting setup.
- `tasks.data`: sources, safe image decoding, splitting, leakage checks, augmentation, the
  packed arrays and their typed metadata.
- `tasks.modeling`: networks, pretrained weights, the one preprocessing, the model artifact,
  the Lightning module, callbacks, fit and cross-validation, behavioural checks.
- `tasks.tuning`: the search space, the searcher, the Ray trainable and runtime, reports.
"""
