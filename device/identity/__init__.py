"""Who is enrolled and who a face is: the encrypted gallery and its keys, consent-bound enrolment, sealed
enrolment sets, matching, the per-visit decision, claims (verification mode), calibration and the audit log.

The gallery is four modules with one job each: ``gallery_records`` (what a subject's record and secrets
are), ``gallery_file`` (the file format and its cryptography, reviewable on its own), ``gallery_store``
(enrol, forget, purge, backup and restore for the commands) and ``live_gallery`` (the running unit's view
and last-seen hook). Where each file sits is ``device.layout.StateLayout``'s to say.

Imports the core, ``device.models`` and ``device.vision`` (the quality gate); never events or the unit.
"""
