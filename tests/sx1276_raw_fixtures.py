"""Plain register access to an SX1276, written the way a driver other than ours writes it.

``RawSx1276`` follows Adafruit's CircuitPython RFM9x driver: one SPI transaction per register
(address byte with bit 7 set for a write, then the value), read-modify-write of bit fields, and
its reset (RST low for 100 us, then high, then 5 ms before the first access, datasheet 7.2).
It runs on any ``Backend`` (in-process chip or ``sim://``), from the calling thread.
"""

from __future__ import annotations

import time

from drivers.radio.spi import Backend, Pins

REG_OP_MODE = 0x01
REG_PA_CONFIG = 0x09
REG_OCP = 0x0B
REG_FIFO = 0x00
REG_FIFO_ADDR_PTR = 0x0D
REG_FIFO_TX_BASE_ADDR = 0x0E
REG_IRQ_FLAGS = 0x12
REG_PAYLOAD_LENGTH = 0x22
REG_DIO_MAPPING_1 = 0x40
REG_VERSION = 0x42
REG_PA_DAC = 0x4D
SLEEP, STANDBY, TX, RX_CONTINUOUS, RX_SINGLE, CAD = 0x00, 0x01, 0x03, 0x05, 0x06, 0x07
LONG_RANGE = 0x80


class RawSx1276:
    """Register reads and writes on ``backend`` (blocking: call from a worker thread)."""

    def __init__(self, backend: Backend, pins: Pins) -> None:
        self.spi = backend.spi
        self.gpio = backend.gpio
        self.pins = pins
        # Adafruit's switch_to_output(value=True): RST driven high from the start, no pulse.
        self.gpio.output(pins.reset, 1)

    def read_u8(self, address: int) -> int:
        return self.spi.xfer([address & 0x7F, 0])[1]

    def write_u8(self, address: int, value: int) -> None:
        self.spi.xfer([(address | 0x80) & 0xFF, value & 0xFF])

    def read_burst(self, address: int, count: int) -> list[int]:
        return self.spi.xfer([address & 0x7F] + [0] * count)[1:]

    def pulse_reset(self) -> None:
        """RST low for 100 us, then released; the caller decides how long to wait."""
        self.gpio.output(self.pins.reset, 0)
        time.sleep(0.0001)
        self.gpio.output(self.pins.reset, 1)

    def reset(self) -> None:
        self.pulse_reset()
        time.sleep(0.005)

    def set_mode(self, mode: int) -> None:
        op_mode = self.read_u8(REG_OP_MODE)
        self.write_u8(REG_OP_MODE, (op_mode & ~0x07 & 0xFF) | mode)

    def lora_sleep(self) -> None:
        """Sleep, then LongRangeMode (it only changes in Sleep), as Adafruit's init does."""
        self.set_mode(SLEEP)
        time.sleep(0.01)
        self.write_u8(REG_OP_MODE, LONG_RANGE | SLEEP)

    def set_frequency(self, frequency_hz: int) -> None:
        frf = int(frequency_hz / (32_000_000 / 2**19)) & 0xFFFFFF
        for offset, value in enumerate((frf >> 16, (frf >> 8) & 0xFF, frf & 0xFF)):
            self.write_u8(0x06 + offset, value)

    def set_tx_power(self, power_dbm: int) -> None:
        """Adafruit's ``tx_power`` setter for high-power modules: PA_BOOST, PaDac 0x87 above
        +20 (and 3 dB less in OutputPower), RegOcp left as it is."""
        if power_dbm > 20:
            self.write_u8(REG_PA_DAC, 0x87)
            power_dbm -= 3
        else:
            self.write_u8(REG_PA_DAC, 0x84)
        self.write_u8(REG_PA_CONFIG, self.read_u8(REG_PA_CONFIG) | 0x80)
        pa_config = self.read_u8(REG_PA_CONFIG) & 0xF0
        self.write_u8(REG_PA_CONFIG, pa_config | ((power_dbm - 5) & 0x0F))

    def send(self, payload: bytes) -> None:
        """Adafruit's ``send``: Standby, FIFO from 0, length, TX with DIO0 = TxDone."""
        self.set_mode(STANDBY)
        self.write_u8(REG_FIFO_ADDR_PTR, 0x00)
        for byte in payload:
            self.write_u8(REG_FIFO, byte)
        self.write_u8(REG_PAYLOAD_LENGTH, len(payload))
        self.set_mode(TX)
        self.write_u8(REG_DIO_MAPPING_1, (self.read_u8(REG_DIO_MAPPING_1) & 0x3F) | 0x40)
