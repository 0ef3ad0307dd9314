"""The radio a node runs on: the interface ``node/runner.py`` drives, and small helpers.

Every method returns at once: nothing blocks, nothing waits for the air. The runner polls
(``tx_finished``, ``received``, ``receiving``) from its ``step``; a board may also call the
runner's ``interrupt`` on DIO0 so it need not poll often. One implementation per chip or
driver: ``node/sx127x.py`` (SX127x registers on ``machine.SPI`` / ``machine.Pin``) and
``node/rfm9x.py`` (CircuitPython's ``adafruit_rfm9x``).

    configure(frequency_hz, spreading_factor, bandwidth_hz, coding_rate, tx_power_dbm,
              preamble, sync_word)
                        LoRa settings of both directions: explicit header, payload CRC on
                        (docs/protocol.md, Air). ``coding_rate`` is the denominator, 5..8.
    start_transmit(frame)
                        send ``frame`` (1..255 bytes) now with normal I/Q (an uplink)
    tx_finished() -> bool
                        the frame of the last ``start_transmit`` has left the antenna (TxDone)
    start_receive()     receive continuously with inverted I/Q (the gateway's downlinks)
    received() -> (payload, rssi_dbm, snr_db) or None
                        the next whole packet received since ``start_receive``, once. A packet
                        with a payload CRC error is dropped and counted (``crc_errors``).
    standby(); sleep()  stop transmitting or receiving (sleep: lowest power)

Refinements over the first draft of this interface (added, nothing renamed):

    receiving() -> bool
                        a frame's header has been detected and its payload is still arriving:
                        the runner keeps a receive window open past its end for a frame that
                        started inside it (docs/protocol.md: "wait for a preamble for
                        rx_window_s"). A radio that cannot tell returns False.
    crc_errors          int attribute: packets dropped with a payload CRC error
"""


class Radio:
    """The interface, as a base class a driver may inherit from (none has to)."""

    crc_errors = 0

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
        raise NotImplementedError

    def start_transmit(self, frame: bytes) -> None:
        raise NotImplementedError

    def tx_finished(self) -> bool:
        raise NotImplementedError

    def start_receive(self) -> None:
        raise NotImplementedError

    def received(self):
        raise NotImplementedError

    def receiving(self) -> bool:
        return False

    def standby(self) -> None:
        raise NotImplementedError

    def sleep(self) -> None:
        raise NotImplementedError


# Bandwidths an SX127x offers, in Hz (RegModemConfig1 codes 0..9).
BANDWIDTHS_HZ = (7800, 10400, 15600, 20800, 31250, 41700, 62500, 125000, 250000, 500000)


def check_settings(
    frequency_hz: int,
    spreading_factor: int,
    bandwidth_hz: int,
    coding_rate: int,
    preamble: int,
    sync_word: int,
) -> None:
    """ValueError for settings no SX127x-class LoRa radio takes."""
    if not 137000000 <= frequency_hz <= 1020000000:
        raise ValueError("frequency must be 137..1020 MHz")
    if not 6 <= spreading_factor <= 12:
        raise ValueError("spreading factor must be 6..12")
    if bandwidth_hz not in BANDWIDTHS_HZ:
        raise ValueError("bandwidth must be one of " + str(BANDWIDTHS_HZ))
    if not 5 <= coding_rate <= 8:
        raise ValueError("coding rate must be 5..8 (4/5..4/8)")
    if not 6 <= preamble <= 65535:
        raise ValueError("preamble must be 6..65535 symbols")
    if not 0 <= sync_word <= 0xFF:
        raise ValueError("sync word must be one byte")


def time_on_air_s(
    length: int, spreading_factor: int, bandwidth_hz: int, coding_rate: int, preamble: int
) -> float:
    """Time on air of a ``length``-byte payload, explicit header and CRC on (SX1276 datasheet
    4.1.1.7); low data rate optimisation when a symbol lasts 16 ms or more, as LoRaWAN does."""
    symbol_s = (1 << spreading_factor) / bandwidth_hz
    low_rate = 1 if symbol_s >= 0.016 else 0
    bits = 8 * length - 4 * spreading_factor + 28 + 16
    per_block = 4 * (spreading_factor - 2 * low_rate)
    blocks = (bits + per_block - 1) // per_block
    if blocks < 0:
        blocks = 0
    payload_symbols = 8 + blocks * coding_rate
    return (preamble + 4.25 + payload_symbols) * symbol_s
