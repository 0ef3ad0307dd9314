"""BLE decoding and filtering without a driver: BTHome (bthome-ble), iBeacon, MACs, limits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError
from hypothesis import given
from hypothesis import strategies as st

from drivers.ble.advert import AdvertRejected, BleAdvert, normalize_mac, sig_uuid
from drivers.ble.bleak_backend import PASSIVE_PATTERNS, BleakBackend, advert_from_bleak
from drivers.ble.bthome import decode_bthome
from drivers.ble.filters import MacFilter, Presence, RateLimiter
from drivers.ble.ibeacon import APPLE_COMPANY_ID, IBeacon, encode_ibeacon, parse_ibeacon
from drivers.ble.sim import SimBleSensor, encode_bthome_v2
from gateway.model import EventKind

BTHOME = sig_uuid(0xFCD2)
MAC = "A4:C1:38:12:34:56"


def bthome_advert(service_data: bytes, mac: str = MAC) -> BleAdvert:
    return BleAdvert(mac, -70, "t", {BTHOME: service_data}, {}, 1.0)


def test_bthome_v2_encoding_matches_the_spec_example() -> None:
    # BTHome v2 example: battery 93 %, temperature 25.06 °C, humidity 50.55 %.
    encoded = encode_bthome_v2([(0x03, 50.55), (0x01, 93), (0x02, 25.06)])
    assert encoded == bytes.fromhex("40015d02ca0903bf13")
    assert encode_bthome_v2([(0x02, -5.5)]) == bytes.fromhex("4002dafd")


def test_bthome_decoded_by_bthome_ble() -> None:
    advert = SimBleSensor(MAC, temperature=-5.5, humidity=61.25, battery=80, window=True).advert(
        2.0
    )
    reading = decode_bthome(advert)
    assert reading is not None
    assert reading.values == {"battery": 80, "temperature": -5.5, "humidity": 61.25, "window": True}
    assert reading.packet_id == 0
    assert reading.fields["temperature"] == {
        "type": "float", "unit": "°C", "device_class": "temperature", "writable": False
    }  # fmt: skip
    assert reading.fields["window"]["type"] == "bool"
    assert reading.fields["window"]["device_class"] == "window"


def test_bthome_refusals() -> None:
    assert decode_bthome(BleAdvert(MAC, -70, None, {}, {76: b"\x02"}, 1.0)) is None
    with pytest.raises(AdvertRejected, match="encrypted"):
        decode_bthome(bthome_advert(bytes.fromhex("41" + "00" * 12)))
    with pytest.raises(AdvertRejected, match="no readable measurement"):
        decode_bthome(bthome_advert(bytes.fromhex("4002ca")))  # temperature cut short
    with pytest.raises(AdvertRejected, match="no readable measurement"):
        decode_bthome(bthome_advert(bytes.fromhex("e0015d")))  # version 7 does not exist


@given(payload=st.binary(max_size=40))
def test_any_bthome_bytes_decode_or_are_rejected(payload: bytes) -> None:
    try:
        reading = decode_bthome(bthome_advert(payload))
    except AdvertRejected:
        return
    assert reading is not None and reading.values


def test_ibeacon_parse_and_encode() -> None:
    beacon = IBeacon("e2c56db5-dffb-48d2-b060-d0f5a71096e0", 258, 772, -59)
    raw = encode_ibeacon(beacon)
    assert raw.hex() == "0215e2c56db5dffb48d2b060d0f5a71096e0010203" + "04c5"
    assert parse_ibeacon({APPLE_COMPANY_ID: raw}) == beacon
    assert parse_ibeacon({APPLE_COMPANY_ID: b"\x10\x05\x01"}) is None  # another Apple message
    assert parse_ibeacon({0x0059: raw}) is None
    with pytest.raises(AdvertRejected, match="iBeacon data is 10 bytes"):
        parse_ibeacon({APPLE_COMPANY_ID: raw[:10]})


@pytest.mark.parametrize(
    "text", ["a4:c1:38:12:34:56", "A4-C1-38-12-34-56", "a4c138123456", " A4:C1:38:12:34:56 "]
)
def test_normalize_mac(text: str) -> None:
    assert normalize_mac(text) == MAC


@pytest.mark.parametrize("text", ["a4:c1:38:12:34", "a4:c1-38:12:34:56", "zz:c1:38:12:34:56", ""])
def test_normalize_mac_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a MAC address"):
        normalize_mac(text)


def test_mac_filter_deny_wins_and_allow_restricts() -> None:
    open_filter = MacFilter(deny=["a4c138123456"])
    assert open_filter.check(MAC) == "denied"
    assert open_filter.check("11:22:33:44:55:66") == "pass"
    closed = MacFilter(allow=["11:22:33:44:55:66", MAC], deny=[MAC])
    assert closed.check(MAC) == "denied"
    assert closed.check("11:22:33:44:55:66") == "pass"
    assert closed.check("11:22:33:44:55:67") == "not_allowed"
    assert closed.listed("11:22:33:44:55:66")


def test_rate_limiter_counts_what_it_holds_back() -> None:
    limiter = RateLimiter(10.0)
    times = [0.0, 1.0, 9.9, 10.0, 15.0, 20.5]
    assert [limiter.allow("d", t) for t in times] == [True, False, False, True, False, True]
    assert limiter.allow("other", 1.0)
    assert limiter.suppressed == {"d": 3}


def test_presence() -> None:
    presence = Presence(60.0)
    assert presence.seen("a", 0.0) is EventKind.ONLINE
    assert presence.seen("a", 30.0) is None
    assert presence.seen("b", 50.0) is EventKind.ONLINE
    assert presence.expired(89.0) == []
    assert presence.expired(95.0) == [("a", 65.0)]
    assert presence.expired(200.0) == [("b", 150.0)]
    assert presence.seen("a", 201.0) is EventKind.ONLINE
    assert Presence(0).expired(1e9) == []


def test_advert_from_bleak_records() -> None:
    device = BLEDevice("a4:c1:38:12:34:56", "dev-name", None)
    data = AdvertisementData(
        local_name=None,
        manufacturer_data={76: bytearray(b"\x02\x15")},
        service_data={BTHOME.upper(): bytearray(b"\x40\x01\x5d")},
        service_uuids=[],
        tx_power=None,
        rssi=-81,
        platform_data=(),
    )
    assert advert_from_bleak(device, data, 12.5) == BleAdvert(
        MAC, -81, "dev-name", {BTHOME: b"\x40\x01\x5d"}, {76: b"\x02\x15"}, 12.5
    )


class FakeBlueZ(BaseBleakScanner):
    """Stands in for BlueZ under bleak's own BleakScanner (bleak's backend injection)."""

    instances: list[FakeBlueZ] = []  # noqa: RUF012
    passive_supported = True

    def __init__(self, callback: Any, service_uuids: Any, scanning_mode: str, **kw: Any) -> None:
        super().__init__(callback, service_uuids)
        self.scanning_mode = scanning_mode
        self.bluez = kw.get("bluez", {})
        self.started = False
        FakeBlueZ.instances.append(self)

    async def start(self) -> None:
        if self.scanning_mode == "passive" and not self.passive_supported:
            raise BleakError("org.bluez.Error.NotSupported")
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def hear(self, address: str, rssi: int, service_data: dict[str, bytes]) -> None:
        adv = AdvertisementData(None, {}, service_data, list(service_data), None, rssi, ())
        self.call_detection_callbacks(
            self.create_or_update_device(address, address, None, None, adv), adv
        )


@pytest.mark.parametrize("passive_supported", [True, False])
async def test_bleak_backend_scans_passively_when_it_can(passive_supported: bool) -> None:
    FakeBlueZ.instances = []
    FakeBlueZ.passive_supported = passive_supported
    received: list[BleAdvert] = []
    backend = BleakBackend(
        received.append, adapter="hci1", bleak_backend=FakeBlueZ, clock=lambda: 7.0
    )
    await backend.start()
    active = FakeBlueZ.instances[-1]
    assert active.started
    assert active.bluez["adapter"] == "hci1"
    if passive_supported:
        assert (backend.scanning_mode, active.scanning_mode) == ("passive", "passive")
        assert active.bluez["or_patterns"] == PASSIVE_PATTERNS
    else:
        assert (backend.scanning_mode, active.scanning_mode) == ("active", "active")
        assert "or_patterns" not in active.bluez
    active.hear("a4:c1:38:12:34:56", -64, {BTHOME: b"\x40\x01\x5d"})
    assert received == [BleAdvert(MAC, -64, None, {BTHOME: b"\x40\x01\x5d"}, {}, 7.0)]
    await backend.stop()
    assert not active.started


def test_gateway_modules_do_not_load_bleak() -> None:
    code = (
        "import sys\n"
        "import drivers.ble.driver, drivers.ble.scanner, drivers.ble.sim, gateway.discovery\n"
        "loaded = [m for m in ('bleak', 'bthome_ble', 'habluetooth') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.stdout.strip() == ""
