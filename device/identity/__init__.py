"""Who is enrolled and who a face is: the encrypted gallery and its keys, consent-bound enrolment, sealed
enrolment sets, matching, the per-visit decision, claims (verification mode), calibration and the audit log.

Imports the core, ``device.models`` and ``device.vision`` (the quality gate); never events or the unit.
"""
