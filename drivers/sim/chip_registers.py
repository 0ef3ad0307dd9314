"""The SX1276 register map the simulated chip keeps: addresses, flags and reset values.

Section numbers refer to the SX1276/77/78/79 datasheet (Rev. 7): 6.1 common registers, 6.2 the
FSK/OOK page, 6.4 the LoRa page, 4.1.6 and 4.2.12 the DIO mapping, 5.4.4 over-current protection,
7.2 reset. Values are the "Reset" column of the register tables (Table 41): what silicon holds
after power-on or a pulse on NRESET. Where the datasheet's "Default" (recommended) column
differs, the reset value is kept and the recommended one named in a comment, because a driver
that relies on a recommended value without writing it fails on a real chip.
"""

from __future__ import annotations

import math

# RegOpMode (0x01)
LONG_RANGE_MODE = 0x80
ACCESS_SHARED_REG = 0x40
MODE_MASK = 0x07
SLEEP, STDBY, FSTX, TX, FSRX, RXCONT, RXSINGLE, CAD = range(8)

# Common registers and the LoRa page (0x0D..0x3F when LongRangeMode is set)
REG_FIFO = 0x00
REG_OP_MODE = 0x01
REG_FRF_MSB, REG_FRF_MID, REG_FRF_LSB = 0x06, 0x07, 0x08
REG_PA_CONFIG = 0x09
REG_PA_RAMP = 0x0A
REG_OCP = 0x0B
REG_LNA = 0x0C
REG_FIFO_ADDR_PTR = 0x0D
REG_FIFO_TX_BASE_ADDR = 0x0E
REG_FIFO_RX_BASE_ADDR = 0x0F
REG_FIFO_RX_CURRENT_ADDR = 0x10
REG_IRQ_FLAGS_MASK = 0x11
REG_IRQ_FLAGS = 0x12
REG_RX_NB_BYTES = 0x13
REG_RX_HEADER_CNT_MSB = 0x14
REG_RX_PACKET_CNT_MSB = 0x16
REG_MODEM_STAT = 0x18
REG_PKT_SNR_VALUE = 0x19
REG_PKT_RSSI_VALUE = 0x1A
REG_RSSI_VALUE = 0x1B
REG_HOP_CHANNEL = 0x1C
REG_MODEM_CONFIG_1 = 0x1D
REG_MODEM_CONFIG_2 = 0x1E
REG_SYMB_TIMEOUT_LSB = 0x1F
REG_PREAMBLE_MSB = 0x20
REG_PREAMBLE_LSB = 0x21
REG_PAYLOAD_LENGTH = 0x22
REG_MAX_PAYLOAD_LENGTH = 0x23
REG_HOP_PERIOD = 0x24
REG_FIFO_RX_BYTE_ADDR = 0x25
REG_MODEM_CONFIG_3 = 0x26
REG_SYNC_WORD = 0x39
REG_DIO_MAPPING_1 = 0x40
REG_DIO_MAPPING_2 = 0x41
REG_VERSION = 0x42
REG_PA_DAC = 0x4D

# RegIrqFlags
IRQ_RX_TIMEOUT = 0x80
IRQ_RX_DONE = 0x40
IRQ_PAYLOAD_CRC_ERROR = 0x20
IRQ_VALID_HEADER = 0x10
IRQ_TX_DONE = 0x08
IRQ_CAD_DONE = 0x04
IRQ_FHSS_CHANGE_CHANNEL = 0x02
IRQ_CAD_DETECTED = 0x01

# RegModemStat bits 4-0: modem clear, header info valid, RX on-going, synchronised, detected
MODEM_CLEAR = 0x10
MODEM_HEADER_VALID = 0x08
MODEM_RECEIVING = 0x07  # RX on-going, signal synchronised, signal detected

# Explicit header: the header sits in the first 8 symbols after the preamble, which lasts
# RegPreamble + 4.25 symbols (datasheet 4.1.1.6, 4.1.1.7); ValidHeader rises when they end.
HEADER_SYMBOLS = 8
PREAMBLE_EXTRA_SYMBOLS = 4.25

SILICON_VERSION = 0x12
FIFO_SIZE = 256
PAGED = range(0x0D, 0x40)  # LoRa or FSK registers depending on RegOpMode

# Registers outside the paged window: the same in LoRa and FSK mode (datasheet 6.1, Table 41).
COMMON_DEFAULTS = {
    REG_OP_MODE: 0x09,  # FSK/OOK, LowFrequencyModeOn, Standby
    0x02: 0x1A,  # RegBitrateMsb: 4.8 kb/s
    0x03: 0x0B,  # RegBitrateLsb
    0x04: 0x00,  # RegFdevMsb: 5 kHz
    0x05: 0x52,  # RegFdevLsb
    REG_FRF_MSB: 0x6C,  # 434 MHz
    REG_FRF_MID: 0x80,
    REG_FRF_LSB: 0x00,
    REG_PA_CONFIG: 0x4F,  # RFO, MaxPower 4, OutputPower 15
    REG_PA_RAMP: 0x09,  # 40 us
    REG_OCP: 0x2B,  # OcpOn, OcpTrim 11: 100 mA
    REG_LNA: 0x20,  # G1 (maximum gain), no boost
    REG_DIO_MAPPING_1: 0x00,
    REG_DIO_MAPPING_2: 0x00,
    REG_VERSION: SILICON_VERSION,
    0x44: 0x2D,  # RegPllHop
    0x4B: 0x09,  # RegTcxo: crystal
    REG_PA_DAC: 0x84,  # PaDac 4: +17 dBm at most on PA_BOOST
    0x5D: 0x00,  # RegBitRateFrac
    0x61: 0x13,  # RegAgcRef
    0x62: 0x0E,  # RegAgcThresh1
    0x63: 0x5B,  # RegAgcThresh2
    0x64: 0xDB,  # RegAgcThresh3
    0x70: 0xD0,  # RegPll: 300 kHz loop bandwidth
}

# The LoRa page (datasheet 6.4); registers not listed reset to 0x00.
LORA_DEFAULTS = {
    REG_FIFO_TX_BASE_ADDR: 0x80,
    REG_MODEM_STAT: MODEM_CLEAR,
    REG_MODEM_CONFIG_1: 0x72,  # 125 kHz, 4/5, explicit header
    REG_MODEM_CONFIG_2: 0x70,  # SF7, CRC off, SymbTimeout(9:8) 0
    REG_SYMB_TIMEOUT_LSB: 0x64,  # 100 symbols
    REG_PREAMBLE_MSB: 0x00,
    REG_PREAMBLE_LSB: 0x08,
    REG_PAYLOAD_LENGTH: 0x01,
    REG_MAX_PAYLOAD_LENGTH: 0xFF,
    REG_HOP_PERIOD: 0x00,  # frequency hopping off
    REG_MODEM_CONFIG_3: 0x04,  # AgcAutoOn
    0x31: 0xC3,  # RegDetectOptimize: SF7..SF12
    0x33: 0x27,  # RegInvertIQ: normal I/Q
    0x37: 0x0A,  # RegDetectionThreshold: SF7..SF12
    REG_SYNC_WORD: 0x12,
    0x3B: 0x1D,  # RegInvertIQ2: normal I/Q
}

# The FSK/OOK page (datasheet 6.2). It is plain storage in this model: nothing is modulated.
FSK_DEFAULTS = {
    0x0D: 0x08,  # RegRxConfig: AgcAutoOn (recommended 0x0E: RxTrigger on PreambleDetect)
    0x0E: 0x02,  # RegRssiConfig: 8 samples
    0x0F: 0x0A,  # RegRssiCollision: 10 dB
    0x10: 0xFF,  # RegRssiThresh: -127.5 dBm
    0x12: 0x15,  # RegRxBw: 10.4 kHz
    0x13: 0x0B,  # RegAfcBw: 50 kHz
    0x14: 0x28,  # RegOokPeak: BitSyncOn, peak mode
    0x15: 0x0C,  # RegOokFix
    0x16: 0x12,  # RegOokAvg
    0x17: 0x47,  # reserved: keep
    0x18: 0x32,  # reserved: keep
    0x19: 0x3E,  # reserved: keep
    0x1F: 0x40,  # RegPreambleDetect: off, 2 bytes (recommended 0xAA)
    0x24: 0x05,  # RegOsc: ClkOut FXOSC/32 (recommended 0x07: ClkOut off)
    0x25: 0x00,  # RegPreambleMsb
    0x26: 0x03,  # RegPreambleLsb: 3 bytes
    0x27: 0x93,  # RegSyncConfig: restart waiting for PLL lock, SyncOn, 4 bytes
    **{address: 0x55 for address in range(0x28, 0x30)},  # RegSyncValue1-8 (recommended 0x01)
    0x30: 0x90,  # RegPacketConfig1: variable length, CRC on
    0x31: 0x40,  # RegPacketConfig2: packet mode
    0x32: 0x40,  # RegPayloadLength: 64 bytes
    0x35: 0x0F,  # RegFifoThresh (recommended 0x8F: start TX when the FIFO is not empty)
    0x39: 0xF5,  # RegTimer1Coef
    0x3A: 0x20,  # RegTimer2Coef
    0x3B: 0x82,  # RegImageCal: AutoImageCalOn, 10 degC threshold (recommended 0x02)
    0x3D: 0x02,  # RegLowBat: 1.835 V, off
    0x3E: 0x80,  # RegIrqFlags1: ModeReady (Standby)
    0x3F: 0x40,  # RegIrqFlags2: FifoEmpty
}

LORA_READ_ONLY = frozenset({0x10, *range(0x13, 0x1D), 0x25, 0x28, 0x29, 0x2A, 0x2C})
COMMON_READ_ONLY = frozenset({REG_VERSION})

BANDWIDTH_CODES = (7_800, 10_400, 15_600, 20_800, 31_250, 41_700, 62_500, 125_000, 250_000, 500_000)
FXOSC_HZ = 32_000_000
LF_PORT_MAX_HZ = 525_000_000

# DIO mapping in LoRa mode (datasheet 4.1.6, Table 18): the RegIrqFlags bit each DioXMapping
# value puts on the pin. DIO0..DIO3 are in RegDioMapping1 (bits 7-6, 5-4, 3-2, 1-0), DIO4 and
# DIO5 in RegDioMapping2 (bits 7-6, 5-4). PllLock, ModeReady and ClkOut (DIO4 01/10, DIO5) are
# not flags and not modelled: those pins stay low.
DIO_LINES = 6
DIO_SOURCES: tuple[dict[int, int], ...] = (
    {0b00: IRQ_RX_DONE, 0b01: IRQ_TX_DONE, 0b10: IRQ_CAD_DONE},
    {0b00: IRQ_RX_TIMEOUT, 0b01: IRQ_FHSS_CHANGE_CHANNEL, 0b10: IRQ_CAD_DETECTED},
    {code: IRQ_FHSS_CHANGE_CHANNEL for code in (0b00, 0b01, 0b10)},
    {0b00: IRQ_CAD_DONE, 0b01: IRQ_VALID_HEADER, 0b10: IRQ_PAYLOAD_CRC_ERROR},
    {0b00: IRQ_CAD_DETECTED},
    {},
)


def dio_mapping(mapping_1: int, mapping_2: int, line: int) -> int:
    """The two mapping bits of DIO ``line`` from RegDioMapping1 and RegDioMapping2."""
    if line < 4:
        return (mapping_1 >> (6 - 2 * line)) & 0x03
    return (mapping_2 >> (6 - 2 * (line - 4))) & 0x03


# Reset timing (datasheet 7.2): after power-on, or after NRESET is released, the chip needs
# 10 ms (power-on) and 5 ms (manual reset) before it answers on SPI.
POWER_ON_RESET_S = 0.010
MANUAL_RESET_S = 0.005

# Over-current protection (datasheet 5.4.4, RegOcp 0x0B).
OCP_ON = 0x20
OCP_TRIM_MASK = 0x1F

# Supply current of the PA_BOOST path at two output powers (datasheet section 2, power table:
# IDDT 120 mA at +20 dBm, 87 mA at +17 dBm). Between and beyond them the current is taken as
# log-linear in output power; the OCP limit is where that line meets Imax.
PA_BOOST_CURRENT_POINTS = ((17.0, 87.0), (20.0, 120.0))


def ocp_limit_ma(reg_ocp: int) -> float | None:
    """Imax set by RegOcp, or None when OcpOn is clear (no limit)."""
    if not reg_ocp & OCP_ON:
        return None
    trim = reg_ocp & OCP_TRIM_MASK
    if trim <= 15:
        return 45.0 + 5.0 * trim
    if trim <= 27:
        return -30.0 + 10.0 * trim
    return 240.0


def pa_boost_current_ma(power_dbm: float) -> float:
    """Supply current the PA_BOOST path draws for ``power_dbm`` of output (the model above)."""
    (p1, i1), (p2, i2) = PA_BOOST_CURRENT_POINTS
    slope = math.log10(i2 / i1) / (p2 - p1)  # decades of current per dB of output
    return i1 * 10 ** (slope * (power_dbm - p1))


def pa_boost_power_at_current(current_ma: float) -> float:
    """The output power at which the PA_BOOST path draws ``current_ma`` (inverse of the above)."""
    (p1, i1), (p2, i2) = PA_BOOST_CURRENT_POINTS
    slope = math.log10(i2 / i1) / (p2 - p1)
    return p1 + math.log10(current_ma / i1) / slope


# Registers accepted without their effect: the first write of a value other than the reset
# value logs this once per chip.
NOT_MODELLED = {
    REG_LNA: "RegLna: LNA gain and boost do not change what the simulated receiver hears",
    REG_PA_RAMP: "RegPaRamp: the PA ramp time does not change the frame on the air",
    REG_HOP_PERIOD: "RegHopPeriod: frequency hopping is not modelled (no FhssChangeChannel)",
    0x4B: "RegTcxo: the reference oscillator input is not modelled",
}
