"""Measuring the shipped models (``device models eval``: detector int8 vs float, embedder against dlib,
latency, PAD models) and the pinned fixture photos they are measured on (``fixtures``: registry packages
fetched by version and sha256). Build, bench and test machines only.

Imports the core, ``device.models``, ``device.vision`` and ``device.identity``; the running unit never
imports it.
"""
