"""Serving the champion over HTTP: the library under the BentoML service in `deploy/service.py`.

Kept out of `deploy/` so it can be tested without a server and reused by the package stage and
the benchmark: saving the champion into the project's BentoML store (`store`), reading uploads
safely (`requests`), shaping predictions (`predictions`), the prediction log (`logbook`), the
extra Prometheus metrics (`metrics`) and the ASGI guard in front of every route (`guard`).
"""
