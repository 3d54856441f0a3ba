"""Measuring the shipped models on the fixture photos (``device models eval``): detector int8 vs float,
embedder against dlib, latency.

Imports the core, ``device.models``, ``device.vision`` and ``device.identity``; the running unit never
imports it.
"""
