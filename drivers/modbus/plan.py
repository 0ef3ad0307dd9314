"""Group a device's register map into as few Modbus read requests as possible (pure).

Only registers that touch or overlap are merged, so a poll never reads an address that is
not in the map (many slaves answer such reads with an exception).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from drivers.modbus.codec import is_bit, width
from drivers.modbus.settings import RegisterSettings

# Protocol limits per request: 125 registers (FC 3/4), 2000 bits (FC 1/2).
MAX_WORDS: Final = 125
MAX_BITS: Final = 2000
TABLE_ORDER: Final = ("coil", "discrete", "holding", "input")


@dataclass(frozen=True, slots=True)
class ReadBlock:
    table: str
    address: int
    count: int
    registers: tuple[RegisterSettings, ...]

    def values_for(
        self, register: RegisterSettings, values: Sequence[int] | Sequence[bool]
    ) -> list:
        start = register.address - self.address
        return list(values[start : start + width(register)])


def plan_reads(registers: Iterable[RegisterSettings]) -> list[ReadBlock]:
    """Read requests covering every register, in table then address order."""
    every = list(registers)
    blocks: list[ReadBlock] = []
    for table in TABLE_ORDER:
        members = sorted((r for r in every if r.table == table), key=lambda r: r.address)
        limit = MAX_BITS if table in ("coil", "discrete") else MAX_WORDS
        current: list[RegisterSettings] = []
        start = end = 0
        for register in members:
            reg_end = register.address + width(register)
            if current and register.address <= end and max(end, reg_end) - start <= limit:
                current.append(register)
                end = max(end, reg_end)
                continue
            if current:
                blocks.append(ReadBlock(table, start, end - start, tuple(current)))
            current, start, end = [register], register.address, reg_end
        if current:
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return blocks


def is_bit_block(block: ReadBlock) -> bool:
    return bool(block.registers) and is_bit(block.registers[0])
