"""Model files and where they run: the accelerator seam (Edge TPU or CPU, ``accelerator``), the TFLite
runtime and delegate loading (``interpreter``), the tensor arithmetic (``tensors``: quantise, dequantise,
pixel preparation), the per-machine CPU file choice (``cpu_variant``), the manifest and its sha256 checks,
the Edge TPU compatibility check and latency timing.

Imports only the top-level core (config, errors, layout, types, atomicio, timing, progress); never a stage.
"""
