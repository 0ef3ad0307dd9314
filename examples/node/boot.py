"""CircuitPython runs this before code.py: with D6 left open (the pull-up reads high) the code
may write to the flash and the computer sees CIRCUITPY read-only; hold D6 to GND while
resetting the board to copy new files onto CIRCUITPY from the computer (docs/NODE.md)."""

import board
import digitalio
import storage

switch = digitalio.DigitalInOut(board.D6)
switch.switch_to_input(pull=digitalio.Pull.UP)
storage.remount("/", readonly=not switch.value)
