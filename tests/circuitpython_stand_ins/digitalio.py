"""Stand-in for CircuitPython's ``digitalio`` on the simulated Feather (``board``): NSS selects
the simulated chip, RESET released after being held low resets it, DIO0 reads its line; other
outputs are said on stderr (``pin D5 high``), as a relay or an LED would show them."""

import _sim_wiring


class Direction:
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"


class DriveMode:
    PUSH_PULL = "PUSH_PULL"
    OPEN_DRAIN = "OPEN_DRAIN"


class Pull:
    UP = "UP"
    DOWN = "DOWN"


_claimed = set()


class DigitalInOut:
    def __init__(self, pin) -> None:
        if not isinstance(pin, _sim_wiring.Pin):
            raise TypeError(f"expected a board pin, got {pin!r}")
        if pin.name in _claimed:
            raise ValueError(f"{pin.name} in use")
        _claimed.add(pin.name)
        self._pin = pin
        self._direction = Direction.INPUT
        self._level = False
        self._pull = None
        self._drive_mode = DriveMode.PUSH_PULL
        self._deinited = False

    def deinit(self) -> None:
        _claimed.discard(self._pin.name)
        self._deinited = True

    def __enter__(self) -> "DigitalInOut":
        return self

    def __exit__(self, *exc_info) -> None:
        self.deinit()

    def switch_to_output(self, value: bool = False, drive_mode: str = DriveMode.PUSH_PULL) -> None:
        self._check_alive()
        self._direction = Direction.OUTPUT
        self._drive_mode = drive_mode
        self._pull = None
        self._drive(bool(value))

    def switch_to_input(self, pull=None) -> None:
        self._check_alive()
        self._direction = Direction.INPUT
        self._pull = pull

    @property
    def direction(self) -> str:
        return self._direction

    @direction.setter
    def direction(self, value: str) -> None:
        if value == Direction.OUTPUT:
            self.switch_to_output()
        elif value == Direction.INPUT:
            self.switch_to_input()
        else:
            raise ValueError(f"invalid direction {value!r}")

    @property
    def value(self) -> bool:
        self._check_alive()
        if self._direction == Direction.OUTPUT:
            return self._level
        if self._pin.role == "dio0":
            return _sim_wiring.radio().dio(0)
        return self._pull == Pull.UP

    @value.setter
    def value(self, level: bool) -> None:
        self._check_alive()
        if self._direction != Direction.OUTPUT:
            raise AttributeError("Cannot set value when direction is input.")
        self._drive(bool(level))

    @property
    def pull(self):
        return self._pull

    @pull.setter
    def pull(self, pull) -> None:
        if self._direction == Direction.OUTPUT:
            raise AttributeError("Pull not used when direction is output.")
        self._pull = pull

    @property
    def drive_mode(self) -> str:
        return self._drive_mode

    @drive_mode.setter
    def drive_mode(self, mode: str) -> None:
        if self._direction == Direction.INPUT:
            raise AttributeError("Drive mode not used when direction is input.")
        self._drive_mode = mode

    def _drive(self, level: bool) -> None:
        before, self._level = self._level, level
        role = self._pin.role
        if role == "cs":  # active low
            if level:
                _sim_wiring.radio().deselect()
            else:
                _sim_wiring.radio().select()
        elif role == "reset":
            if level and not before:
                _sim_wiring.radio().reset_released()
        elif role == "gpio" and level != before:
            _sim_wiring.pin_changed(self._pin, level)

    def _check_alive(self) -> None:
        if self._deinited:
            raise ValueError("Object has been deinitialized and can no longer be used.")
