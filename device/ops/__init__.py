"""The installer's diagnostics: ``device doctor`` (config, keys, models, camera, broker checked one by one
with a fix for each) and ``device snapshot`` (one annotated frame for aiming the camera).

Imports the core, ``device.models``, ``device.vision``, ``device.identity``, ``device.events`` and
``device.runtime``; never the lab, the evaluation or the consumers.
"""
