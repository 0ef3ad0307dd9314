"""The radio contract: settings bounds, description and time on air, shared by every driver."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from drivers.radio.base import RadioError, RadioSettings
from drivers.radio.serial_frames import ErrorFrame, Frame, SettingsFrame
from drivers.radio.serial_port import SerialPortLink
from drivers.sim.serial_modem import SerialModemTwin
from gateway.config import ConfigError, RadioSection
from gateway.protocol.airtime import BANDWIDTHS_HZ

# (setting, lowest, highest) of every integer bound.
BOUNDS = [
    ("frequency_hz", 137_000_000, 1_020_000_000),
    ("spreading_factor", 6, 12),
    ("coding_rate", 5, 8),
    ("tx_power_dbm", 2, 20),
    ("sync_word", 0, 0xFF),
    ("preamble_length", 6, 0xFFFF),
]


def test_defaults_are_within_bounds() -> None:
    assert RadioSettings().problems() == []
    RadioSettings().validate()


@pytest.mark.parametrize(("name", "lowest", "highest"), BOUNDS)
def test_each_bound_takes_its_edges_and_refuses_one_beyond(
    name: str, lowest: int, highest: int
) -> None:
    for value in (lowest, highest):
        assert RadioSettings(**{name: value}).problems() == []
    for value in (lowest - 1, highest + 1):
        settings = RadioSettings(**{name: value})
        assert settings.problems() == [f"{name} must be {lowest}..{highest}, got {value}"]
        with pytest.raises(RadioError, match=f"^{name} must be {lowest}\\.\\.{highest}"):
            settings.validate()


@pytest.mark.parametrize(("name", "lowest", "highest"), BOUNDS)
def test_the_config_file_takes_the_same_bounds(name: str, lowest: int, highest: int) -> None:
    for value in (lowest, highest):
        assert getattr(RadioSection.from_table({name: value}), name) == value
    for value in (lowest - 1, highest + 1):
        with pytest.raises(ConfigError, match=f"^{name}: must be {lowest}\\.\\.{highest}"):
            RadioSection.from_table({name: value})


def test_bandwidths_are_the_nominal_ones_in_the_config_file_too() -> None:
    for bandwidth in BANDWIDTHS_HZ:
        assert RadioSettings(bandwidth_hz=bandwidth).problems() == []
        assert RadioSection.from_table({"bandwidth_hz": bandwidth}).bandwidth_hz == bandwidth
    assert RadioSettings(bandwidth_hz=100_000).problems() == [
        f"bandwidth_hz must be one of {sorted(BANDWIDTHS_HZ)}, got 100000"
    ]
    with pytest.raises(ConfigError, match=r"^bandwidth_hz: must be one of"):
        RadioSection.from_table({"bandwidth_hz": 100_000})


def test_every_problem_is_named_in_one_line() -> None:
    settings = RadioSettings(spreading_factor=13, coding_rate=9, sync_word=-1)
    with pytest.raises(RadioError) as caught:
        settings.validate()
    message = str(caught.value)
    assert "\n" not in message
    assert message.split("; ") == [
        "spreading_factor must be 6..12, got 13",
        "coding_rate must be 5..8, got 9",
        "sync_word must be 0..255, got -1",
    ]


@pytest.mark.parametrize(
    ("settings", "text"),
    [
        (RadioSettings(), "868.1000 MHz SF7 BW125k CR4/5 14 dBm sync 0x12"),
        (
            RadioSettings(
                frequency_hz=869_525_000,
                spreading_factor=12,
                bandwidth_hz=7_800,
                coding_rate=8,
                tx_power_dbm=20,
                sync_word=0x34,
            ),
            "869.5250 MHz SF12 BW7.8k CR4/8 20 dBm sync 0x34",
        ),
    ],
)
def test_description(settings: RadioSettings, text: str) -> None:
    assert settings.describe() == text


def test_time_on_air_follows_every_setting_that_changes_it() -> None:
    base = RadioSettings()
    assert base.time_on_air_s(13) == pytest.approx(0.046336, abs=1e-12)  # SF7 BW125 CR4/5
    longer = [
        dataclasses.replace(base, spreading_factor=8),
        dataclasses.replace(base, bandwidth_hz=62_500),
        dataclasses.replace(base, coding_rate=8),
        dataclasses.replace(base, preamble_length=12),
    ]
    for settings in longer:
        assert settings.time_on_air_s(13) > base.time_on_air_s(13)
    shorter = [
        dataclasses.replace(base, crc=False),
        dataclasses.replace(base, implicit_header=True),
    ]
    for settings in shorter:
        assert settings.time_on_air_s(13) < base.time_on_air_s(13)
    # Low data rate optimisation switches on by itself where the datasheet requires it.
    assert dataclasses.replace(base, spreading_factor=12).time_on_air_s(51) == pytest.approx(
        2.465792, abs=1e-12
    )
    with pytest.raises(ValueError):
        base.time_on_air_s(256)


# --- the simulated modem keeps to the same bounds ---


@pytest.fixture
async def modem_line() -> AsyncIterator[tuple[SerialPortLink, asyncio.Queue[Frame]]]:
    """The host side of a line to a modem twin, speaking frames directly."""
    twin = SerialModemTwin.on_pty()
    await twin.start()
    assert twin.port is not None
    fd = os.open(twin.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    replies: asyncio.Queue[Frame] = asyncio.Queue()
    link = SerialPortLink(fd, "host", replies.put_nowait, lambda reason: None, Counter())
    yield link, replies
    link.close()
    os.close(fd)
    await twin.close()


async def test_the_modem_twin_refuses_settings_out_of_bounds(modem_line) -> None:
    link, replies = modem_line
    link.send(SettingsFrame(1, RadioSettings(tx_power_dbm=-4)))
    reply = await asyncio.wait_for(replies.get(), 2.0)
    assert isinstance(reply, ErrorFrame)
    assert (reply.seq, reply.reason) == (1, "tx_power_dbm must be 2..20, got -4")
    good = RadioSettings(spreading_factor=9)
    link.send(SettingsFrame(2, good))
    assert await asyncio.wait_for(replies.get(), 2.0) == SettingsFrame(2, good)
