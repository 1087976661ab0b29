"""MQTT 3.1.1 and 5.0 on the protocol-neutral core (see server.py)."""
