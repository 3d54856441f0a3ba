"""JSON Schemas of every MQTT payload (package data, shipped with the unit)."""
