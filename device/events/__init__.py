"""What leaves the unit: payload contracts (JSON Schemas), the publish seam, the durable outbox, the MQTT
publisher and the consumer side (``device events tail``). Decisions only, never biometrics.

Imports only the core: nothing here can reach a frame, a template or a model.
"""
