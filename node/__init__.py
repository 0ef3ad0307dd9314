"""duogate node library: the node side of the air protocol (docs/protocol.md).

One source for CPython, MicroPython and CircuitPython. The core is pure: the time and a
random source are passed in, and the radio, the clock and the flash file are the caller's.
"""
