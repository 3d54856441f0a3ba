"""Broker kit: PKI (pki.py) and Mosquitto config rendering (render.py)."""
