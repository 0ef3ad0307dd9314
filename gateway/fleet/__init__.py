"""A fleet of gateways on one broker serving LoRa nodes as one (docs/FLEET.md)."""
