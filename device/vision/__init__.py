"""From frames to face samples: capture (the camera seam, a package: one module per source, the capture
thread), motion gate, detect, track, quality gate, align (with ``shape_predictor5``, dlib's 5-point
landmarks), liveness (with ``face_mesh``, MediaPipe's 468-point mesh), embed, and ``faces`` which chains
detect → align → embed for one picture.

Imports the core and ``device.models`` (to open model files); never identity, events or the unit.
"""
