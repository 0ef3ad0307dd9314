"""Stand-in for CircuitPython's ``microcontroller``: the CPU's temperature sensor (a room that
warms a little through the day) and its unique id."""

import time


class _Processor:
    uid = bytes.fromhex("0123456789abcdef0123")
    frequency = 48_000_000

    @property
    def temperature(self) -> float:
        return 21.5 + (time.time() % 600) / 600

    @property
    def voltage(self) -> float:
        return 3.3


cpu = _Processor()
