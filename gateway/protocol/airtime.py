"""LoRa time on air from the Semtech formula (SX1276 datasheet 4.1.1.7, AN1200.13).

    Tsym      = 2^SF / BW
    Tpreamble = (n_preamble + 4.25) * Tsym
    n_payload = 8 + max(ceil((8*PL - 4*SF + 28 + 16*CRC - 20*IH) / (4*(SF - 2*DE))) * (CR + 4), 0)
    ToA       = Tpreamble + n_payload * Tsym

CR here is the datasheet's 1..4 for 4/5..4/8; this module takes the denominator 5..8 instead,
which equals CR + 4. All arithmetic is done on integers (counted in quarter symbols) so the
result is exact before the final conversion to seconds.
"""

from __future__ import annotations

from fractions import Fraction

# Nominal bandwidths as usually written (Hz) -> the exact value (500 kHz / 2^k and thirds).
BANDWIDTHS_HZ: dict[int, Fraction] = {
    7_800: Fraction(15_625, 2),
    10_400: Fraction(31_250, 3),
    15_600: Fraction(15_625),
    20_800: Fraction(62_500, 3),
    31_250: Fraction(31_250),
    41_700: Fraction(125_000, 3),
    62_500: Fraction(62_500),
    125_000: Fraction(125_000),
    250_000: Fraction(250_000),
    500_000: Fraction(500_000),
}

SPREADING_FACTORS = range(6, 13)
CODING_RATES = range(5, 9)  # 4/5 .. 4/8
MAX_PAYLOAD = 255
MIN_PREAMBLE = 6
MAX_PREAMBLE = 0xFFFF
# The datasheet makes low data rate optimisation mandatory above this symbol time.
LOW_DATA_RATE_SYMBOL_S = Fraction(16, 1000)


def _check_int(name: str, value: object, allowed: range) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value not in allowed:
        raise ValueError(f"{name} must be in {allowed.start}..{allowed.stop - 1}, got {value}")
    return value


def exact_bandwidth_hz(bw_hz: int) -> Fraction:
    """The exact bandwidth for a nominal value such as 125_000 or 7_800; ValueError otherwise."""
    if isinstance(bw_hz, bool) or not isinstance(bw_hz, int) or bw_hz not in BANDWIDTHS_HZ:
        allowed = ", ".join(str(bw) for bw in BANDWIDTHS_HZ)
        raise ValueError(f"bw_hz must be one of {allowed}, got {bw_hz!r}")
    return BANDWIDTHS_HZ[bw_hz]


def _symbol_time(sf: int, bw_hz: int) -> Fraction:
    _check_int("sf", sf, SPREADING_FACTORS)
    return Fraction(2**sf) / exact_bandwidth_hz(bw_hz)


def symbol_time_s(sf: int, bw_hz: int) -> float:
    """Duration of one LoRa symbol in seconds."""
    return float(_symbol_time(sf, bw_hz))


def low_data_rate_required(sf: int, bw_hz: int) -> bool:
    """True when the symbol time exceeds 16 ms (SF11/SF12 at 125 kHz, SF12 at 250 kHz, ...)."""
    return _symbol_time(sf, bw_hz) > LOW_DATA_RATE_SYMBOL_S


def payload_symbols(
    payload_len: int,
    sf: int,
    cr: int = 5,
    explicit_header: bool = True,
    crc: bool = True,
    low_data_rate: bool = False,
) -> int:
    """Number of symbols after the preamble (header included), per the datasheet formula."""
    _check_int("payload_len", payload_len, range(MAX_PAYLOAD + 1))
    _check_int("sf", sf, SPREADING_FACTORS)
    _check_int("cr", cr, CODING_RATES)
    numerator = 8 * payload_len - 4 * sf + 28 + (16 if crc else 0) - (0 if explicit_header else 20)
    denominator = 4 * (sf - (2 if low_data_rate else 0))
    blocks = max(-(-numerator // denominator), 0)  # ceiling division on integers
    return 8 + blocks * cr


def time_on_air_s(
    payload_len: int,
    sf: int,
    bw_hz: int,
    cr: int = 5,
    preamble: int = 8,
    explicit_header: bool = True,
    crc: bool = True,
    low_data_rate: bool | None = None,
) -> float:
    """Time on air of one LoRa packet in seconds.

    ``cr`` is the coding rate denominator (5..8 for 4/5..4/8). ``preamble`` is the programmed
    preamble length (RegPreamble); the modem adds 4.25 symbols. ``low_data_rate=None`` enables
    the optimisation exactly when it is mandatory (symbol time above 16 ms).
    """
    symbol = _symbol_time(sf, bw_hz)
    _check_int("preamble", preamble, range(MIN_PREAMBLE, MAX_PREAMBLE + 1))
    for name, flag in (("explicit_header", explicit_header), ("crc", crc)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
    if low_data_rate is None:
        low_data_rate = symbol > LOW_DATA_RATE_SYMBOL_S
    elif not isinstance(low_data_rate, bool):
        raise ValueError(f"low_data_rate must be a bool or None, got {low_data_rate!r}")
    payload = payload_symbols(payload_len, sf, cr, explicit_header, crc, low_data_rate)
    quarter_symbols = 4 * preamble + 17 + 4 * payload  # (preamble + 4.25 + payload) * 4
    return float(quarter_symbols * symbol / 4)
