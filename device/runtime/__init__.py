"""What runs on the unit: the pipeline that wires every stage together, the runner and the service
(systemd notify, watchdog), the start-up self-test and the system readings in the health.

Imports the core, ``device.models``, ``device.vision``, ``device.identity`` and ``device.events`` only:
never the lab, the evaluation, the installer's diagnostics or the consumers, so what ships to the Pi is
exactly what it runs (tests/test_layering.py says so).
"""
