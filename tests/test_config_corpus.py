"""``check-config`` and ``run`` agree on every file of ``tests/config_corpus``.

Each bad file names the expected problem in its first line (``# expect: mqtt.topic_prefix``);
both commands must refuse it with exit 2 and exactly that one line on stderr, ``run`` before it
starts anything. Each good file passes ``check-config`` (with the ``# warn:`` lines it names).

Leading comment lines describe what a case needs besides itself, created by the test:

    # file: NAME [mode=OCTAL] text=TEXT | hex=HEX | pad=BYTES   (TEXT takes \\n-style escapes)
    # env: NAME=VALUE                                          (VALUE takes \\x07-style escapes)
    # pad-to: BYTES                                            (comment lines up to that size)

Both commands run as processes through ``python -m gateway``. As root they run without the
capabilities that bypass file modes, so a secret of mode 000 is unreadable for them as it is
for the service user.
"""

from __future__ import annotations

import codecs
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "config_corpus"
BAD = sorted((CORPUS / "bad").glob("*.toml"))
GOOD = sorted((CORPUS / "good").glob("*.toml"))
REPO = Path(__file__).resolve().parent.parent
# Root reads any file whatever its mode; without these capabilities it obeys the mode bits.
FILE_MODE_OVERRIDES = "-dac_override,-dac_read_search"


@dataclass
class Case:
    """A corpus file with what its leading comments ask for."""

    path: Path
    expect: str | None = None
    warnings: list[str] = field(default_factory=list)
    files: list[tuple[str, int, bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    pad_to: int = 0

    @classmethod
    def read(cls, path: Path) -> Case:
        case = cls(path)
        for raw in path.read_bytes().splitlines():
            if not raw.startswith(b"# "):
                break
            key, _, value = raw[2:].decode().partition(": ")
            if key == "expect":
                case.expect = value
            elif key == "warn":
                case.warnings.append(value)
            elif key == "file":
                case.files.append(_file_directive(value))
            elif key == "env":
                name, _, text = value.partition("=")
                case.env[name] = codecs.decode(text, "unicode_escape")
            elif key == "pad-to":
                case.pad_to = int(value)
        return case

    def materialise(self, folder: Path) -> Path:
        """Write the config and the files it needs into ``folder``; the config's path."""
        config = folder / "duogate.toml"
        body = self.path.read_bytes()
        if self.pad_to:
            line = b"# " + b"x" * 77 + b"\n"
            body += line * (1 + (self.pad_to - len(body)) // len(line))
        config.write_bytes(body)
        for name, mode, content in self.files:
            target = folder / name
            target.write_bytes(content)
            target.chmod(mode)
        return config


def _file_directive(value: str) -> tuple[str, int, bytes]:
    name, *options = value.split(" ", 1)
    mode, content = 0o600, b""
    rest = options[0] if options else ""
    if rest.startswith("mode="):
        mode_text, _, rest = rest.partition(" ")
        mode = int(mode_text.removeprefix("mode="), 8)
    if rest.startswith("text="):
        content = codecs.decode(rest.removeprefix("text="), "unicode_escape").encode()
    elif rest.startswith("hex="):
        content = bytes.fromhex(rest.removeprefix("hex="))
    elif rest.startswith("pad="):
        content = b"p" * int(rest.removeprefix("pad="))
    return name, mode, content


def _as_a_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root needs setpriv (util-linux) to drop file-mode overrides")
    return [setpriv, f"--inh-caps={FILE_MODE_OVERRIDES}", f"--bounding-set={FILE_MODE_OVERRIDES}"]


def duogate(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DUOGATE_CORPUS_")}
    return subprocess.run(
        [*_as_a_user(), sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_corpus_is_large_enough() -> None:
    assert len(BAD) >= 40 and len(GOOD) >= 3
    assert all(Case.read(path).expect for path in BAD)


@pytest.mark.parametrize("path", BAD, ids=[path.stem for path in BAD])
def test_check_config_and_run_refuse_alike(path: Path, tmp_path: Path) -> None:
    case = Case.read(path)
    assert case.expect, f"{path.name}: first line must be '# expect: ...'"
    config = case.materialise(tmp_path)
    written = sorted(os.listdir(tmp_path))

    checked = duogate("check-config", str(config), env=case.env)
    assert checked.returncode == 2, checked
    assert "Traceback" not in checked.stderr
    lines = checked.stderr.splitlines()
    assert len(lines) == 1, checked.stderr
    assert case.expect in lines[0], lines[0]
    assert checked.stdout == ""

    # A file check-config refuses, run refuses the same way, before it opens anything: it
    # would otherwise keep running (or wait on a broker) until the timeout.
    ran = duogate("run", "--config", str(config), env=case.env, timeout=30)
    assert (ran.returncode, ran.stderr, ran.stdout) == (2, checked.stderr, "")
    assert sorted(os.listdir(tmp_path)) == written  # no data directory, no socket


@pytest.mark.parametrize("path", GOOD, ids=[path.stem for path in GOOD])
def test_good_configs_pass_with_their_warnings(path: Path, tmp_path: Path) -> None:
    case = Case.read(path)
    config = case.materialise(tmp_path)
    checked = duogate("check-config", str(config), env=case.env)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{config}: ok")
    warnings = checked.stderr.splitlines()
    assert all(line.startswith("warning: ") for line in warnings), warnings
    assert len(warnings) == len(case.warnings), warnings
    for expected in case.warnings:
        assert any(expected in line for line in warnings), (expected, warnings)
