"""Stand-in for CircuitPython's ``board`` on a Feather with an RFM95 (SX1276): the radio pins
lead to a simulated chip (``_sim_wiring``); the other pins are plain lines.

Names as CircuitPython gives them: the Feather M0 RFM9x (``RFM9X_CS``, ``RFM9X_RST``,
``RFM9X_D0``) and the Feather RP2040 RFM (``RFM_CS``, ``RFM_RST``, ``RFM_IO0``).
"""

from _sim_wiring import Pin

board_id = "duogate_simulated_feather_rfm95"

SCK = Pin("SCK", "sck")
MOSI = Pin("MOSI", "mosi")
MISO = Pin("MISO", "miso")
RFM9X_CS = RFM_CS = Pin("RFM9X_CS", "cs")
RFM9X_RST = RFM_RST = Pin("RFM9X_RST", "reset")
RFM9X_D0 = RFM_IO0 = Pin("RFM9X_D0", "dio0")

LED = D13 = Pin("D13")
D5 = Pin("D5")
D6 = Pin("D6")
D9 = Pin("D9")
D10 = Pin("D10")
D11 = Pin("D11")
D12 = Pin("D12")
A0 = Pin("A0")
A1 = Pin("A1")


def SPI():
    """The board's default SPI bus."""
    import busio

    return busio.SPI(SCK, MOSI=MOSI, MISO=MISO)
