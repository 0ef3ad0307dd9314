"""Running Python in a real MicroPython: the WebAssembly port from the npm registry
(@micropython/micropython-webassembly-pyscript, pinned in the Makefile), run by Node.js through
tests/micropython_runner.mjs. `make test` installs Node.js (apt-get) and the port (npm, into
.venv/node).

The port is MicroPython's own interpreter and standard modules, built for WebAssembly. It has no
``cryptolib`` (no AES): a test that needs AES passes ``CRYPTOLIB_STAND_IN``, which serves the C
module's calls with Node.js's OpenSSL.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PORT = (
    ROOT / ".venv" / "node" / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
)
RUNNER = TESTS / "micropython_runner.mjs"

NODE_LIBRARY = ROOT / "node"
# micropython-lib's cbor2, what `mip install cbor2` puts on a board.
CBOR2 = ROOT / "node" / "vendor" / "cbor2"
CRYPTOLIB_STAND_IN = TESTS / "micropython_stand_ins" / "cryptolib.py"

RUN_TIMEOUT_S = 60.0


class MicroPythonMissing(RuntimeError):
    """Node.js or the WebAssembly port is not installed."""


class MicroPythonError(AssertionError):
    """The script raised in MicroPython. ``traceback`` is MicroPython's; ``stdout`` what the
    script printed before."""

    def __init__(self, traceback: str, stdout: str) -> None:
        super().__init__(
            "MicroPython raised:\n" + traceback + ("\nprinted before:\n" + stdout if stdout else "")
        )
        self.traceback = traceback
        self.stdout = stdout


def port_version() -> str:
    """The installed WebAssembly port's npm version."""
    return json.loads((_port_module().parent / "package.json").read_text())["version"]


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise MicroPythonMissing("node is not installed: run `make test` (installs nodejs, npm)")
    return node


def _port_module() -> Path:
    module = PORT / "micropython.mjs"
    if not module.is_file():
        raise MicroPythonMissing(
            f"MicroPython's WebAssembly port is not in {PORT.relative_to(ROOT)}: run `make test` "
            "(installs it with npm)"
        )
    return module


def run_micropython(script: str, packages: list[Path]) -> str:
    """Run ``script`` in MicroPython and return what it printed.

    Each of ``packages`` (a folder or a single .py file) is copied into MicroPython's /lib under
    its own name, so ``import node.frames`` works for ``NODE_LIBRARY``. An exception in the
    script raises MicroPythonError with MicroPython's traceback.
    """
    command = [_node(), str(RUNNER), str(_port_module())]
    for package in packages:
        if not package.exists():
            raise FileNotFoundError(f"no such package to copy into MicroPython: {package}")
        command.append(str(package))
    try:
        done = subprocess.run(
            command, input=script, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as timeout:
        raise MicroPythonError(
            f"still running after {RUN_TIMEOUT_S:.0f} s", _text(timeout.stdout)
        ) from None
    if done.returncode == 1:
        raise MicroPythonError(done.stderr, done.stdout)
    if done.returncode != 0:
        raise RuntimeError(f"the MicroPython runner failed ({done.returncode}): {done.stderr}")
    return done.stdout


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
