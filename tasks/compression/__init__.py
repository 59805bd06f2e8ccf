"""Model compression: the trained network with its preprocessing as ONNX (fp32 and static int8),
the onnxruntime classifier that promotion and serving share, and the report of what is served.

Kept apart from `tasks.modeling` because serving needs only the torch-free half of it
(`report`, `runtime`), and from `tasks/compress.py` so that promotion and the service reuse it.
"""
