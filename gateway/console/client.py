"""``duogate console``: the technician's end of the console socket, interactive or one command."""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.config import ConfigError, load_config
from gateway.console.wire import FAREWELL, PROMPT, console_socket_path

DEFAULT_CONFIG = Path("/etc/duogate/duogate.toml")


def add_console_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help=f"gateway config (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("--socket", type=Path, default=None, help="console socket path")
    parser.add_argument(
        "-c",
        "--command",
        dest="console_command",
        default=None,
        help="run one command, print its output and exit",
    )


def console_main(args: argparse.Namespace) -> int:
    """``duogate console``: interactive, or one command with ``-c``. Exit 1 on any error.

    Reads ``args.socket``, ``args.config`` and ``args.console_command`` (the ``-c`` text; see
    ``add_console_arguments``).
    """
    try:
        path = _client_socket_path(args)
    except ConfigError as exc:
        print(f"error: {exc.problems[0]}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = getattr(args, "console_command", None)
    try:
        if command is not None:
            return asyncio.run(run_one_shot(path, command))
        return asyncio.run(run_interactive(path))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"error: cannot reach the console at {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _client_socket_path(args: argparse.Namespace) -> Path:
    socket_path = getattr(args, "socket", None)
    if socket_path is not None:
        return Path(socket_path)
    config_path = getattr(args, "config", None)
    if config_path is None:
        if not DEFAULT_CONFIG.is_file():
            raise ValueError(
                f"no console socket: give --socket or --config ({DEFAULT_CONFIG} absent)"
            )
        config_path = DEFAULT_CONFIG
    return console_socket_path(load_config(config_path, check_files=False))


async def run_one_shot(path: Path, command: str, write: Callable[[str], None] | None = None) -> int:
    """Run one console command, streaming its output to ``write`` (default stdout).

    Returns 1 when the output holds an error line or the console refused the session.
    """
    write = write or _write_stdout
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        greeting: list[str] = []
        if not await _read_until_prompt(reader, greeting.append):
            write("".join(greeting))  # the console refused the session
            return 1
        writer.write(command.replace("\n", " ").encode() + b"\n")
        await writer.drain()
        printed: list[str] = []

        def keep(text: str) -> None:
            printed.append(text)
            write(text)

        await _read_until_prompt(reader, keep)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    output = "".join(printed)
    return 1 if any(line.startswith("error:") for line in output.splitlines()) else 0


async def _read_until_prompt(reader: asyncio.StreamReader, write: Callable[[str], None]) -> bool:
    """Pass on output until the prompt (not passed on; True) or the end of the connection."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    held = ""
    while True:
        data = await reader.read(4096)
        held += decoder.decode(data, final=not data)
        if held.endswith(PROMPT):
            write(held[: -len(PROMPT)])
            return True
        if not data:
            write(held)
            return False
        # Hold back a tail that could be the start of the prompt.
        keep = next((n for n in range(len(PROMPT) - 1, 0, -1) if held.endswith(PROMPT[:n])), 0)
        write(held[: len(held) - keep])
        held = held[len(held) - keep :]


async def run_interactive(path: Path) -> int:
    """Line-mode session: the local terminal edits lines, the console answers.

    Ends with 0 when the session ends as asked (``quit``, or the end of input: Ctrl-D or the
    end of a piped file); 1, with a line on stderr, when the gateway closes the connection on
    its own (it stopped, or refused the session).
    """
    reader, writer = await asyncio.open_unix_connection(str(path))
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.fileno()
    input_ended = False

    def end_input() -> None:
        nonlocal input_ended
        input_ended = True
        with contextlib.suppress(OSError):
            writer.write_eof()

    def on_stdin() -> None:
        try:
            data = os.read(stdin, 4096)
        except OSError:  # the terminal went away
            data = b""
        if data:
            writer.write(data)
        else:
            loop.remove_reader(stdin)
            end_input()

    try:
        loop.add_reader(stdin, on_stdin)
    except (PermissionError, ValueError):  # a regular file: send it all
        writer.write(sys.stdin.buffer.read())
        end_input()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    shown = ""  # the tail of what was printed
    try:
        while True:
            data = await reader.read(4096)
            text = decoder.decode(data, final=not data)
            _write_stdout(text)
            shown = (shown + text)[-len(FAREWELL) :]
            if not data:
                break
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(stdin)
        writer.close()
    if shown and not shown.endswith("\n"):
        _write_stdout("\n")
    if input_ended or shown == FAREWELL:
        return 0
    print("console connection closed by the gateway", file=sys.stderr)
    return 1


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
