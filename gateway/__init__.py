"""duogate: LoRa, BLE and Modbus devices relayed to MQTT and XMPP with end-to-end command expiry."""

__version__ = "0.1.0"
