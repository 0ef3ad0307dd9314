"""LoRa radio drivers behind one small interface (see ``drivers.radio.base``)."""
