"""From frames to face samples: capture (camera seam), motion gate, detect, track, quality gate, align,
embed, and ``faces`` which chains detect → align → embed for one picture.

Imports the core and ``device.models`` (to open model files); never identity, events or the unit.
"""
