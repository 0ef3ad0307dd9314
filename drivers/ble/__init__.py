"""BLE advertisements (BTHome v2, iBeacon, raw) turned into reports.

``drivers.ble.driver.BleDriver`` is the entry point. Nothing here imports bleak or bthome-ble
at module level: they load only when a BLE driver is built (the ``ble`` extra).
"""
