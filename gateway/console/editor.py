"""Line editing of raw terminal input, for the serial console (terminals do not echo)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from gateway.console.parser import MAX_LINE


@dataclass(frozen=True, slots=True)
class LineTooLong:
    length: int


class LineEditor:
    """Raw input bytes to lines: CR, LF or CRLF end a line; backspace and Ctrl-U edit;
    Ctrl-C drops the line; terminal escape sequences (arrow keys) are ignored.

    ``feed`` returns the completed lines and the text to echo (empty without echo).
    """

    def __init__(self, *, echo: bool, max_line: int = MAX_LINE) -> None:
        self._echo = echo
        self._max_line = max_line
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chars: list[str] = []
        self._overflow = 0
        self._escape = ""  # "", "esc" or "csi"
        self._after_cr = False

    def reset(self) -> None:
        self._chars.clear()
        self._overflow = 0
        self._escape = ""

    def feed(self, data: bytes) -> tuple[list[str | LineTooLong], str]:
        lines: list[str | LineTooLong] = []
        echo: list[str] = []
        for char in self._decoder.decode(data):
            after_cr, self._after_cr = self._after_cr, False
            if self._escape:
                self._skip_escape(char)
            elif char == "\x1b":
                self._escape = "esc"
            elif char in "\r\n":
                if char == "\n" and after_cr:
                    continue
                self._after_cr = char == "\r"
                lines.append(self._finish())
                echo.append("\n")
            elif char in "\x7f\b":
                if self._overflow:
                    self._overflow -= 1
                elif self._chars:
                    self._chars.pop()
                    echo.append("\b \b")
            elif char == "\x15":  # Ctrl-U
                echo.append("\b \b" * len(self._chars))
                self.reset()
            elif char == "\x03":  # Ctrl-C
                self.reset()
                lines.append("")
                echo.append("^C\n")
            elif char == "\t" or char >= " ":
                char = " " if char == "\t" else char
                if len(self._chars) >= self._max_line:
                    self._overflow += 1
                else:
                    self._chars.append(char)
                    echo.append(char)
        return lines, "".join(echo) if self._echo else ""

    def _skip_escape(self, char: str) -> None:
        if self._escape == "esc":
            self._escape = "csi" if char in "[O" else ""
        elif "@" <= char <= "~":
            self._escape = ""

    def _finish(self) -> str | LineTooLong:
        line = "".join(self._chars)
        overflow = self._overflow
        self.reset()
        if overflow:
            return LineTooLong(len(line) + overflow)
        return line
