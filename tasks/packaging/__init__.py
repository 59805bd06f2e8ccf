"""Packaging the champion as a bento and proving the built bento serves it (the package stage).

The stage (:mod:`tasks.package`) is a leaf; the pieces live here so that tests can run each on
its own: :mod:`~tasks.packaging.build` saves the champion into the project-local BentoML store
and builds the bento, :mod:`~tasks.packaging.server` starts and always stops a real
`bentoml serve` process, :mod:`~tasks.packaging.golden` makes the golden requests and the
offline answers they must get, and :mod:`~tasks.packaging.validation` runs the checks against a
served bento. Only real HTTP against a real server counts: a bento that builds but does not
serve, or serves other predictions than the model that the gate judged, fails the stage.
"""
