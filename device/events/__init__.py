"""What leaves the unit: payload contracts (JSON Schemas), event signing and command checks, the publish
seam, the durable outbox, the MQTT publisher and the Home Assistant discovery messages. Decisions only,
never biometrics. (The code that listens on other machines lives in ``device.consumers``.)

Imports only the core: nothing here can reach a frame, a template or a model.
"""
