"""The node's radio (node/radio.py) on CircuitPython's ``adafruit_rfm9x``: an RFM95/96/98
(SX1276/77/78) on a Feather, driven by Adafruit's own driver.

    import board, busio, digitalio, adafruit_rfm9x
    spi = busio.SPI(board.SCK, MOSI=board.MOSI, MISO=board.MISO)
    cs = digitalio.DigitalInOut(board.RFM9X_CS)
    reset = digitalio.DigitalInOut(board.RFM9X_RST)
    radio = Rfm9xRadio(adafruit_rfm9x.RFM9x(spi, cs, reset, 869.525))
    radio.configure(869525000, 7, 125000, 5, 14)

The driver resets the chip, checks it and sets frequency, bandwidth, coding rate, spreading
factor, preamble, power and CRC through its own properties; what it has no setting for is
written through its register access (``_read_u8`` / ``_write_u8`` / ``_write_from``):

* I/Q polarity (docs/protocol.md, Air): uplinks go out with normal I/Q (RegInvertIQ 0x33 bit 0
  set, RegInvertIQ2 0x3B = 0x1D), downlinks are received inverted (bit 6 set, 0x19); bits 5-1
  of RegInvertIQ keep their reset value.
* The sync word (RegSyncWord 0x39), explicit header, low data rate optimisation, and the
  over-current limit for +18..+20 dBm (RegOcp 0x0B). Output power is ``tx_power_dbm``
  (2..20) on PA_BOOST by the datasheet's formula: the driver's ``tx_power`` is asked for 3 dB
  more, since it writes OutputPower as ``tx_power - 5``.
* Transmitting without waiting: ``RFM9x.send`` blocks until TxDone and puts RadioHead's 4-byte
  header in front of the payload; ``start_transmit`` fills the FIFO with the frame alone and
  returns, and ``tx_finished`` polls TxDone (``RFM9x.tx_done``).

Receiving is ``RFM9x.receive(timeout=0)``, polled: it drops a packet with a payload CRC error
(counted in ``crc_errors``). Its RSSI gets the SNR added when the SNR is negative (datasheet
5.5.5), which the driver leaves out.
"""

import time

from node.radio import Radio, check_settings, time_on_air_s

_REG_FIFO = 0x00
_REG_OCP = 0x0B
_REG_FIFO_ADDR_PTR = 0x0D
_REG_IRQ_FLAGS = 0x12
_REG_MODEM_STAT = 0x18
_REG_MODEM_CONFIG_1 = 0x1D
_REG_PAYLOAD_LENGTH = 0x22
_REG_RSSI_WIDEBAND = 0x2C
_REG_INVERT_IQ = 0x33
_REG_SYNC_WORD = 0x39
_REG_INVERT_IQ2 = 0x3B

_IRQ_RX_DONE = 0x40
_IRQ_VALID_HEADER = 0x10
_IRQ_ALL = 0xFF
_MODEM_SIGNAL_DETECTED = 0x01
_IMPLICIT_HEADER = 0x01

_INVERT_IQ_RX = 0x40
_INVERT_IQ_TX_NORMAL = 0x01
_INVERT_IQ2_INVERTED = 0x19
_INVERT_IQ2_NORMAL = 0x1D

_LOW_BAND_MAX_HZ = 525000000


class Rfm9xRadio(Radio):
    """node/radio.py's interface on an ``adafruit_rfm9x.RFM9x``.

    ``clock()`` gives seconds (``time.monotonic``); it bounds a transmission that never ends
    (a chip that lost power): after twice its time on air and a second, ``tx_finished`` gives
    up, puts the chip in standby and counts it in ``tx_timeouts``.
    """

    def __init__(self, rfm, clock=None) -> None:
        self.rfm = rfm
        self.crc_errors = 0
        self.tx_timeouts = 0
        self.packets = 0
        self._clock = clock if clock is not None else time.monotonic
        self._invert_iq_reserved = rfm._read_u8(_REG_INVERT_IQ) & 0x3E
        self._settings = None
        self._transmitting = False
        self._tx_deadline = 0.0

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
        check_settings(
            frequency_hz, spreading_factor, bandwidth_hz, coding_rate, preamble, sync_word
        )
        rfm = self.rfm
        rfm.idle()
        rfm.low_frequency_mode = 1 if frequency_hz <= _LOW_BAND_MAX_HZ else 0
        rfm.frequency_mhz = frequency_hz / 1000000
        rfm.signal_bandwidth = bandwidth_hz
        rfm.coding_rate = coding_rate
        rfm.spreading_factor = spreading_factor
        rfm.preamble_length = preamble
        rfm.enable_crc = True
        if not 2 <= tx_power_dbm <= 20:
            raise ValueError("PA_BOOST power must be 2..20 dBm")
        # The driver writes OutputPower = tx_power - 5 (PaDac on above 20): by the datasheet's
        # PA_BOOST formula (2 + OutputPower, 5 + OutputPower with PaDac) that is 3 dB less.
        rfm.tx_power = tx_power_dbm + 3
        # Over-current trim: 140 mA for +18..+20 dBm, else the reset value's 100 mA.
        rfm._write_u8(_REG_OCP, 0x20 | (0x11 if tx_power_dbm > 17 else 0x0B))
        symbol_us = ((1 << spreading_factor) * 1000000) // bandwidth_hz
        rfm.low_datarate_optimize = 1 if symbol_us >= 16000 else 0
        config_1 = rfm._read_u8(_REG_MODEM_CONFIG_1)
        rfm._write_u8(_REG_MODEM_CONFIG_1, config_1 & ~_IMPLICIT_HEADER & 0xFF)
        rfm._write_u8(_REG_SYNC_WORD, sync_word)
        self._settings = (spreading_factor, bandwidth_hz, coding_rate, preamble)
        if rfm.spreading_factor != spreading_factor or rfm._read_u8(_REG_SYNC_WORD) != sync_word:
            raise OSError("the RFM9x did not keep its settings: check the wiring")

    # ------------------------------------------------------------------- transmit

    def start_transmit(self, frame: bytes) -> None:
        if not 1 <= len(frame) <= 255:
            raise ValueError("a LoRa frame is 1..255 bytes")
        if self._settings is None:
            raise ValueError("configure the radio first")
        rfm = self.rfm
        rfm.idle()
        rfm._write_u8(_REG_INVERT_IQ, self._invert_iq_reserved | _INVERT_IQ_TX_NORMAL)
        rfm._write_u8(_REG_INVERT_IQ2, _INVERT_IQ2_NORMAL)
        rfm._write_u8(_REG_IRQ_FLAGS, _IRQ_ALL)
        rfm._write_u8(_REG_FIFO_ADDR_PTR, 0x00)  # the driver's FIFO TX base
        rfm._write_from(_REG_FIFO, frame)
        rfm._write_u8(_REG_PAYLOAD_LENGTH, len(frame))
        sf, bandwidth, coding_rate, preamble = self._settings
        airtime = time_on_air_s(len(frame), sf, bandwidth, coding_rate, preamble)
        self._tx_deadline = self._clock() + 2 * airtime + 1.0
        self._transmitting = True
        rfm.transmit()

    def tx_finished(self) -> bool:
        if not self._transmitting:
            return True
        rfm = self.rfm
        if not rfm.tx_done():
            if self._clock() < self._tx_deadline:
                return False
            self.tx_timeouts += 1
        self._transmitting = False
        rfm.idle()
        rfm._write_u8(_REG_IRQ_FLAGS, _IRQ_ALL)
        return True

    # -------------------------------------------------------------------- receive

    def start_receive(self) -> None:
        rfm = self.rfm
        rfm.idle()
        iq = self._invert_iq_reserved | _INVERT_IQ_TX_NORMAL | _INVERT_IQ_RX
        rfm._write_u8(_REG_INVERT_IQ, iq)
        rfm._write_u8(_REG_INVERT_IQ2, _INVERT_IQ2_INVERTED)
        rfm._write_u8(_REG_IRQ_FLAGS, _IRQ_ALL)
        rfm.listen()

    def received(self):
        """(payload, rssi_dbm, snr_db) of a packet received since the last call, or None."""
        rfm = self.rfm
        if not rfm.rx_done():
            return None
        crc_errors = rfm.crc_error_count
        # with_header: the frame as it came, RadioHead's header bytes left alone; the
        # driver goes back to listening and clears the IRQ flags.
        packet = rfm.receive(timeout=0.0, keep_listening=True, with_header=True)
        self.crc_errors += rfm.crc_error_count - crc_errors
        if packet is None:
            return None
        self.packets += 1
        snr = rfm.last_snr
        rssi = rfm.last_rssi
        if snr < 0:
            rssi = rssi + snr
        return bytes(packet), float(rssi), float(snr)

    def receiving(self) -> bool:
        """A frame's preamble was detected and its packet is not complete yet."""
        rfm = self.rfm
        if rfm._read_u8(_REG_MODEM_STAT) & _MODEM_SIGNAL_DETECTED:
            return True
        flags = rfm._read_u8(_REG_IRQ_FLAGS)
        return bool(flags & _IRQ_VALID_HEADER) and not flags & _IRQ_RX_DONE

    # ------------------------------------------------------------------------ idle

    def standby(self) -> None:
        self._transmitting = False
        self.rfm.idle()

    def sleep(self) -> None:
        self._transmitting = False
        self.rfm.sleep()

    def random_bytes(self, count: int) -> bytes:
        """Bytes from the wideband RSSI's least significant bit, eight reads a byte, taken
        while listening (datasheet 5.5.7, RegRssiWideband): for boards without ``os.urandom``
        (the SAMD21 of a Feather M0). The chip is left in standby."""
        rfm = self.rfm
        rfm.listen()
        out = bytearray(count)
        for index in range(count):
            value = 0
            for _ in range(8):
                value = (value << 1) | (rfm._read_u8(_REG_RSSI_WIDEBAND) & 0x01)
            out[index] = value
        rfm.idle()
        return bytes(out)
