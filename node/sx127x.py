"""An SX1276/77/78/79 (RFM95/96/98) in LoRa mode on a machine.SPI / machine.Pin-like bus:
the node's radio (node/radio.py). Portable: MicroPython, CircuitPython (with small adapters),
CPython.

Wiring, as MicroPython names it::

    spi = machine.SPI(1, baudrate=5_000_000, polarity=0, phase=0)
    cs = machine.Pin(18, machine.Pin.OUT, value=1)
    rst = machine.Pin(14, machine.Pin.OUT, value=1)     # optional
    radio = Sx127x(spi, cs, rst, sleep_ms=time.sleep_ms)
    radio.reset(); radio.begin()

``spi.write_readinto(out, into)`` is the only SPI call; ``cs.value(0|1)`` selects the chip
around each transfer; ``rst.value(0|1)`` pulses the reset line. DIO0 is optional: the driver
polls RegIrqFlags, and ``on_dio0(handler)`` wires the pin's rising edge (``pin.irq``) to a
handler such as ``Runner.interrupt`` so a board may sleep until it.

I/Q polarity (docs/protocol.md, Air): uplinks go out with normal I/Q (RegInvertIQ 0x33 bit 0
set, RegInvertIQ2 0x3B = 0x1D), downlinks are received inverted (bit 6 set, 0x19); bits 5-1
of RegInvertIQ keep their reset value. Explicit header and payload CRC on; a packet with a
payload CRC error is dropped and counted (``crc_errors``). Packet SNR and RSSI per datasheet
5.5.5: SNR = RegPktSnrValue / 4 (signed), RSSI = -157 + RegPktRssiValue (-164 on the low
frequency port, 525 MHz and below), plus the SNR when it is negative.
"""

from node.radio import Radio, check_settings

VERSION = 0x12
_WRITE = 0x80

_REG_FIFO = 0x00
_REG_OP_MODE = 0x01
_REG_FRF_MSB = 0x06
_REG_PA_CONFIG = 0x09
_REG_OCP = 0x0B
_REG_LNA = 0x0C
_REG_FIFO_ADDR_PTR = 0x0D
_REG_FIFO_TX_BASE_ADDR = 0x0E
_REG_FIFO_RX_BASE_ADDR = 0x0F
_REG_FIFO_RX_CURRENT_ADDR = 0x10
_REG_IRQ_FLAGS_MASK = 0x11
_REG_IRQ_FLAGS = 0x12
_REG_RX_NB_BYTES = 0x13
_REG_MODEM_STAT = 0x18
_REG_PKT_SNR_VALUE = 0x19
_REG_PKT_RSSI_VALUE = 0x1A
_REG_MODEM_CONFIG_1 = 0x1D
_REG_MODEM_CONFIG_2 = 0x1E
_REG_PREAMBLE_MSB = 0x20
_REG_PAYLOAD_LENGTH = 0x22
_REG_MAX_PAYLOAD_LENGTH = 0x23
_REG_MODEM_CONFIG_3 = 0x26
_REG_RSSI_WIDEBAND = 0x2C
_REG_DETECT_OPTIMIZE = 0x31
_REG_INVERT_IQ = 0x33
_REG_DETECTION_THRESHOLD = 0x37
_REG_SYNC_WORD = 0x39
_REG_INVERT_IQ2 = 0x3B
_REG_DIO_MAPPING_1 = 0x40
_REG_VERSION = 0x42
_REG_PA_DAC = 0x4D

_LONG_RANGE = 0x80
_SLEEP = 0x00
_STDBY = 0x01
_TX = 0x03
_RX_CONTINUOUS = 0x05

_IRQ_RX_DONE = 0x40
_IRQ_PAYLOAD_CRC_ERROR = 0x20
_IRQ_VALID_HEADER = 0x10
_IRQ_TX_DONE = 0x08
_IRQ_ALL = 0xFF

_DIO0_RX_DONE = 0x00  # RegDioMapping1 bits 7-6
_DIO0_TX_DONE = 0x40

_INVERT_IQ_RX = 0x40
_INVERT_IQ_TX_NORMAL = 0x01
_INVERT_IQ2_INVERTED = 0x19
_INVERT_IQ2_NORMAL = 0x1D

_MODEM_SIGNAL_DETECTED = 0x01

_FXOSC_HZ = 32000000
_LOW_BAND_MAX_HZ = 525000000
_BANDWIDTH_CODES = {
    7800: 0,
    10400: 1,
    15600: 2,
    20800: 3,
    31250: 4,
    41700: 5,
    62500: 6,
    125000: 7,
    250000: 8,
    500000: 9,
}

# The status block read at every receive poll: RegFifoRxCurrentAddr .. RegPktRssiValue.
_STATUS_FIRST = _REG_FIFO_RX_CURRENT_ADDR
_STATUS_LEN = _REG_PKT_RSSI_VALUE - _STATUS_FIRST + 1


class ChipNotFound(OSError):
    """RegVersion did not read 0x12: no SX127x answers on this bus."""


def packet_snr_db(raw: int) -> float:
    """RegPktSnrValue: a signed byte in quarter dB."""
    if raw >= 128:
        raw -= 256
    return raw / 4


def packet_rssi_dbm(raw: int, snr_db: float, low_band: bool) -> float:
    """RegPktRssiValue (datasheet 5.5.5), with the SNR added below the noise floor."""
    rssi = raw - (164 if low_band else 157)
    if snr_db < 0:
        return rssi + snr_db
    return float(rssi)


class Sx127x(Radio):
    """The radio interface on SX127x registers. Counters: ``crc_errors``, ``packets``."""

    def __init__(self, spi, cs, reset=None, dio0=None, sleep_ms=None) -> None:
        self.spi = spi
        self.cs = cs
        self.reset_pin = reset
        self.dio0 = dio0
        self._sleep_ms = sleep_ms
        self.crc_errors = 0
        self.packets = 0
        self.frequency_hz = 0
        self._invert_iq_reserved = 0x26  # bits 5-1 at reset; read again in configure
        self._one = bytearray(2)
        self._one_in = bytearray(2)
        self._status = bytearray(_STATUS_LEN + 1)
        self._status_out = bytearray(_STATUS_LEN + 1)
        self._status_out[0] = _STATUS_FIRST

    # ------------------------------------------------------------------ registers

    def _transfer(self, out, into) -> None:
        self.cs.value(0)
        try:
            self.spi.write_readinto(out, into)
        finally:
            self.cs.value(1)

    def read(self, address: int) -> int:
        self._one[0] = address & 0x7F
        self._one[1] = 0
        self._transfer(self._one, self._one_in)
        return self._one_in[1]

    def write(self, address: int, value: int) -> None:
        self._one[0] = address | _WRITE
        self._one[1] = value & 0xFF
        self._transfer(self._one, self._one_in)

    def read_block(self, address: int, length: int) -> bytearray:
        out = bytearray(length + 1)
        out[0] = address & 0x7F
        into = bytearray(length + 1)
        self._transfer(out, into)
        return into[1:]

    def write_block(self, address: int, data) -> None:
        out = bytearray((address | _WRITE,)) + bytes(data)
        self._transfer(out, bytearray(len(out)))

    def _mode(self, mode: int) -> None:
        self.write(_REG_OP_MODE, _LONG_RANGE | mode)

    # ---------------------------------------------------------------------- setup

    def reset(self) -> None:
        """Pulse RST (if wired) and wait the 5 ms the chip needs (datasheet 7.2)."""
        if self.reset_pin is None:
            return
        if self._sleep_ms is None:
            raise ValueError("a reset needs sleep_ms (time.sleep_ms on a board)")
        self.reset_pin.value(0)
        self._sleep_ms(1)
        self.reset_pin.value(1)
        self._sleep_ms(6)

    def begin(self) -> None:
        """Check RegVersion and put the chip in LoRa sleep; ChipNotFound without a chip."""
        version = self.read(_REG_VERSION)
        if version != VERSION:
            raise ChipNotFound("no SX127x: RegVersion reads " + hex(version) + ", not 0x12")
        self.write(_REG_OP_MODE, _SLEEP)  # LongRangeMode changes only in sleep
        self._mode(_SLEEP)
        self._mode(_STDBY)

    def configure(
        self,
        frequency_hz: int,
        spreading_factor: int,
        bandwidth_hz: int,
        coding_rate: int,
        tx_power_dbm: int,
        preamble: int = 8,
        sync_word: int = 0x12,
    ) -> None:
        """LoRa settings (node/radio.py); PA_BOOST output, 2..20 dBm."""
        check_settings(
            frequency_hz, spreading_factor, bandwidth_hz, coding_rate, preamble, sync_word
        )
        if not 2 <= tx_power_dbm <= 20:
            raise ValueError("PA_BOOST power must be 2..20 dBm")
        self._mode(_SLEEP)
        self._mode(_STDBY)
        self.frequency_hz = frequency_hz
        frf = frequency_hz * 524288 // _FXOSC_HZ  # Fxosc / 2^19 steps, rounded down as the gateway
        self.write_block(_REG_FRF_MSB, bytes(((frf >> 16) & 0xFF, (frf >> 8) & 0xFF, frf & 0xFF)))
        explicit = 0
        self.write(
            _REG_MODEM_CONFIG_1,
            (_BANDWIDTH_CODES[bandwidth_hz] << 4) | ((coding_rate - 4) << 1) | explicit,
        )
        self.write(_REG_MODEM_CONFIG_2, (spreading_factor << 4) | 0x04)  # RxPayloadCrcOn
        symbol_us = ((1 << spreading_factor) * 1000000) // bandwidth_hz
        low_data_rate = 0x08 if symbol_us >= 16000 else 0
        self.write(_REG_MODEM_CONFIG_3, low_data_rate | 0x04)  # AgcAutoOn
        sf6 = spreading_factor == 6
        detect = self.read(_REG_DETECT_OPTIMIZE) & 0xF8
        self.write(_REG_DETECT_OPTIMIZE, detect | (0x05 if sf6 else 0x03))
        self.write(_REG_DETECTION_THRESHOLD, 0x0C if sf6 else 0x0A)
        self.write_block(_REG_PREAMBLE_MSB, bytes(((preamble >> 8) & 0xFF, preamble & 0xFF)))
        self.write(_REG_SYNC_WORD, sync_word)
        high_power = tx_power_dbm > 17
        # PA_BOOST: Pout = 2 + OutputPower, or 5 + OutputPower with the +20 dBm PaDac on.
        self.write(_REG_PA_CONFIG, 0x80 | 0x70 | (tx_power_dbm - (5 if high_power else 2)))
        self.write(_REG_PA_DAC, 0x87 if high_power else 0x84)
        self.write(_REG_OCP, 0x20 | (0x11 if high_power else 0x0B))  # 140 mA / 100 mA
        self.write(_REG_LNA, 0x23)  # maximum gain, LNA boost on the HF port
        self._invert_iq_reserved = self.read(_REG_INVERT_IQ) & 0x3E
        self.write(_REG_FIFO_TX_BASE_ADDR, 0x00)
        self.write(_REG_FIFO_RX_BASE_ADDR, 0x00)
        self.write(_REG_MAX_PAYLOAD_LENGTH, 0xFF)
        self.write(_REG_IRQ_FLAGS_MASK, 0x00)
        self.write(_REG_IRQ_FLAGS, _IRQ_ALL)
        got = self.read_block(_REG_MODEM_CONFIG_1, 2)
        if got[0] != (_BANDWIDTH_CODES[bandwidth_hz] << 4) | ((coding_rate - 4) << 1):
            raise OSError("SX127x did not keep RegModemConfig1: " + hex(got[0]))
        if self.read(_REG_SYNC_WORD) != sync_word:
            raise OSError("SX127x did not keep RegSyncWord")

    def on_dio0(self, handler) -> None:
        """Call ``handler()`` on every rising edge of DIO0 (TxDone, RxDone)."""
        if self.dio0 is None:
            raise ValueError("DIO0 is not wired")
        rising = getattr(self.dio0, "IRQ_RISING", 1)
        self.dio0.irq(handler=lambda pin: handler(), trigger=rising)

    # ------------------------------------------------------------------- transmit

    def start_transmit(self, frame: bytes) -> None:
        if not 1 <= len(frame) <= 255:
            raise ValueError("a LoRa frame is 1..255 bytes")
        self._mode(_STDBY)
        self.write(_REG_INVERT_IQ, self._invert_iq_reserved | _INVERT_IQ_TX_NORMAL)
        self.write(_REG_INVERT_IQ2, _INVERT_IQ2_NORMAL)
        self.write(_REG_IRQ_FLAGS, _IRQ_ALL)
        self.write(_REG_DIO_MAPPING_1, _DIO0_TX_DONE)
        self.write(_REG_FIFO_ADDR_PTR, 0x00)
        self.write_block(_REG_FIFO, frame)
        self.write(_REG_PAYLOAD_LENGTH, len(frame))
        self._mode(_TX)

    def tx_finished(self) -> bool:
        if not self.read(_REG_IRQ_FLAGS) & _IRQ_TX_DONE:
            return False
        self.write(_REG_IRQ_FLAGS, _IRQ_TX_DONE)
        return True

    # -------------------------------------------------------------------- receive

    def start_receive(self) -> None:
        self._mode(_STDBY)
        self.write(_REG_INVERT_IQ, self._invert_iq_reserved | _INVERT_IQ_TX_NORMAL | _INVERT_IQ_RX)
        self.write(_REG_INVERT_IQ2, _INVERT_IQ2_INVERTED)
        self.write(_REG_IRQ_FLAGS, _IRQ_ALL)
        self.write(_REG_DIO_MAPPING_1, _DIO0_RX_DONE)
        self.write(_REG_FIFO_ADDR_PTR, 0x00)
        self._mode(_RX_CONTINUOUS)

    def received(self):
        """(payload, rssi_dbm, snr_db) of a packet received since the last call, or None."""
        status = self._status
        self._transfer(self._status_out, status)
        flags = status[1 + _REG_IRQ_FLAGS - _STATUS_FIRST]
        if not flags & _IRQ_RX_DONE:
            return None
        self.write(_REG_IRQ_FLAGS, flags)
        if flags & _IRQ_PAYLOAD_CRC_ERROR:
            self.crc_errors += 1
            return None
        self.write(_REG_FIFO_ADDR_PTR, status[1 + _REG_FIFO_RX_CURRENT_ADDR - _STATUS_FIRST])
        length = status[1 + _REG_RX_NB_BYTES - _STATUS_FIRST]
        payload = bytes(self.read_block(_REG_FIFO, length))
        snr = packet_snr_db(status[1 + _REG_PKT_SNR_VALUE - _STATUS_FIRST])
        raw_rssi = status[1 + _REG_PKT_RSSI_VALUE - _STATUS_FIRST]
        low_band = self.frequency_hz <= _LOW_BAND_MAX_HZ
        self.packets += 1
        return payload, packet_rssi_dbm(raw_rssi, snr, low_band), snr

    def receiving(self) -> bool:
        """A frame's preamble was detected and its packet is not complete yet."""
        if self.read(_REG_MODEM_STAT) & _MODEM_SIGNAL_DETECTED:
            return True
        flags = self.read(_REG_IRQ_FLAGS)
        return bool(flags & _IRQ_VALID_HEADER) and not flags & _IRQ_RX_DONE

    # ------------------------------------------------------------------------ idle

    def standby(self) -> None:
        self._mode(_STDBY)

    def sleep(self) -> None:
        self._mode(_SLEEP)

    def random_bytes(self, count: int) -> bytes:
        """Bytes from the wideband RSSI's least significant bit, eight reads a byte, taken in
        RX continuous (datasheet 5.5.7, RegRssiWideband); the chip is left in standby."""
        self._mode(_RX_CONTINUOUS)
        out = bytearray(count)
        for index in range(count):
            value = 0
            for _ in range(8):
                value = (value << 1) | (self.read(_REG_RSSI_WIDEBAND) & 0x01)
            out[index] = value
        self._mode(_STDBY)
        return bytes(out)
