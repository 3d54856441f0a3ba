"""The running unit: the pipeline that wires every stage together, the service (systemd notify, watchdog),
self-test, system health, the demo and its generated clip, the local dev broker and the benchmark.

The only package that may import every other one (core, models, vision, identity, events, evaluation).
"""
