import math
from fractions import Fraction

import pytest

from gateway.protocol.airtime import (
    low_data_rate_required,
    payload_symbols,
    symbol_time_s,
    time_on_air_s,
)


def datasheet_time_on_air(
    pl: int, sf: int, bw: int, cr_index: int, n_preamble: int, ih: int, crc: int, de: int
) -> Fraction:
    """SX1276 datasheet 4.1.1.7 written out term by term; cr_index is 1..4 for 4/5..4/8."""
    t_sym = Fraction(2**sf, bw)
    t_preamble = (n_preamble + Fraction(17, 4)) * t_sym
    ratio = Fraction(8 * pl - 4 * sf + 28 + 16 * crc - 20 * ih, 4 * (sf - 2 * de))
    n_payload = 8 + max(math.ceil(ratio) * (cr_index + 4), 0)
    return t_preamble + n_payload * t_sym


def test_reference_point_sf7_13_bytes():
    assert time_on_air_s(13, 7, 125_000) == pytest.approx(0.046336, abs=1e-12)


def test_reference_point_sf12_51_bytes():
    assert time_on_air_s(51, 12, 125_000) == pytest.approx(2.465792, abs=1e-12)


def test_sf12_without_low_data_rate_optimisation_is_shorter():
    assert time_on_air_s(51, 12, 125_000, low_data_rate=False) < time_on_air_s(51, 12, 125_000)


@pytest.mark.parametrize("explicit_header", [True, False])
@pytest.mark.parametrize("crc", [True, False])
def test_every_sf_bw_cr_and_payload_matches_the_datasheet(explicit_header, crc):
    for sf in range(7, 13):
        for bw in (125_000, 250_000, 500_000):
            de = 1 if Fraction(2**sf, bw) > Fraction(16, 1000) else 0
            for cr in range(5, 9):
                for pl in range(1, 256):
                    expected = datasheet_time_on_air(
                        pl, sf, bw, cr - 4, 8, 0 if explicit_header else 1, int(crc), de
                    )
                    got = time_on_air_s(pl, sf, bw, cr, 8, explicit_header, crc)
                    assert got == float(expected), (sf, bw, cr, pl)


def test_preamble_length_and_forced_optimisation():
    for preamble in (6, 8, 12, 100, 65535):
        for de in (False, True):
            expected = datasheet_time_on_air(20, 9, 125_000, 3, preamble, 0, 1, int(de))
            assert time_on_air_s(20, 9, 125_000, 7, preamble, low_data_rate=de) == float(expected)


def test_low_data_rate_is_automatic_above_16_ms_symbols():
    assert low_data_rate_required(11, 125_000)
    assert low_data_rate_required(12, 125_000)
    assert low_data_rate_required(12, 250_000)
    assert not low_data_rate_required(10, 125_000)
    assert not low_data_rate_required(11, 250_000)
    assert not low_data_rate_required(12, 500_000)


def test_symbol_time():
    assert symbol_time_s(7, 125_000) == 0.001024
    assert symbol_time_s(12, 125_000) == 0.032768
    assert symbol_time_s(7, 7_800) == 128 / 7812.5


def test_payload_symbols_never_below_eight():
    # SF12 implicit header without CRC: numerator is negative for a 1-byte payload
    assert payload_symbols(1, 12, 5, explicit_header=False, crc=False) == 8


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"payload_len": 256}, "payload_len"),
        ({"payload_len": -1}, "payload_len"),
        ({"payload_len": 1.5}, "payload_len"),
        ({"sf": 5}, "sf"),
        ({"sf": 13}, "sf"),
        ({"bw_hz": 100_000}, "bw_hz"),
        ({"bw_hz": 125_000.0}, "bw_hz"),
        ({"cr": 4}, "cr"),
        ({"cr": 9}, "cr"),
        ({"preamble": 5}, "preamble"),
        ({"preamble": 65536}, "preamble"),
        ({"explicit_header": 1}, "explicit_header"),
        ({"crc": "yes"}, "crc"),
        ({"low_data_rate": 0}, "low_data_rate"),
        ({"sf": True}, "sf"),
    ],
)
def test_bad_arguments_are_rejected_with_the_argument_named(kwargs, fragment):
    args = {"payload_len": 10, "sf": 7, "bw_hz": 125_000} | kwargs
    with pytest.raises(ValueError, match=fragment):
        time_on_air_s(**args)


def test_symbol_time_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bw_hz"):
        symbol_time_s(7, 0)
    with pytest.raises(ValueError, match="sf"):
        symbol_time_s(4, 125_000)
