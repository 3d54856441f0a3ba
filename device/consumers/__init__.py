"""What runs on other machines and listens to the units: ``device events tail``, the door controller, the
commander that signs commands and the status reader. They verify what the units sign and never hold a
biometric.

Imports the core and ``device.events`` (payload contracts, signature checks) only: a consumer can reach no
frame, template or model, and the unit imports nothing from here.
"""
