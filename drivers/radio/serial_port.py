"""A serial line driven from the asyncio loop, carrying the frames of ``serial_frames``.

Used at both ends: by ``SerialRadio`` on the gateway's side and by the simulated modem
(``drivers.sim.serial_modem``) on the other.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections import Counter
from collections.abc import Callable

from drivers.radio.base import RadioError
from drivers.radio.serial_frames import BadFrame, Frame, FrameDecoder, encode_frame

log = logging.getLogger(__name__)


class SerialPortLink:
    """A serial port driven from the asyncio loop: ``add_reader`` in, buffered nonblocking out.

    ``on_frame`` gets each good frame and ``on_lost`` the reason the port went away; both run
    on the loop. Bad chunks are logged in one line and counted in ``counters``.
    """

    def __init__(
        self,
        fd: int,
        name: str,
        on_frame: Callable[[Frame], None],
        on_lost: Callable[[str], None],
        counters: Counter[str],
    ) -> None:
        self.name = name
        self._fd = fd
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._counters = counters
        self._decoder = FrameDecoder()
        self._out = bytearray()
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._loop.add_reader(fd, self._readable)

    def send(self, frame: Frame) -> None:
        if self._closed:
            raise RadioError(f"{self.name}: port is closed")
        pending = bool(self._out)
        self._out += encode_frame(frame)
        if not pending:
            self._writable()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lose(f"read failed: {os.strerror(exc.errno or errno.EIO)}")
            return
        if not data:
            self._lose("end of file")
            return
        for item in self._decoder.feed(data):
            if isinstance(item, BadFrame):
                self._counters[item.reason] += 1
                log.warning(
                    "%s: dropped %d-byte chunk: %s%s",
                    self.name,
                    item.size,
                    item.reason,
                    f" ({item.detail})" if item.detail else "",
                )
            else:
                self._on_frame(item)

    def _writable(self) -> None:
        try:
            written = os.write(self._fd, self._out)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._lose(f"write failed: {os.strerror(exc.errno or errno.EIO)}")
            return
        del self._out[:written]
        if self._out:
            self._loop.add_writer(self._fd, self._writable)
        else:
            self._loop.remove_writer(self._fd)

    def _lose(self, reason: str) -> None:
        if self._closed:
            return
        self.close()
        self._out.clear()
        self._on_lost(reason)
