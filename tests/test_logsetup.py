"""Logging: journald gets priority prefixes and no timestamps of ours; a terminal gets times."""

from __future__ import annotations

import logging
import re

import pytest

from gateway.logsetup import JournalFormatter, set_level, setup_logging


def test_journal_lines_carry_a_priority_and_no_timestamp():
    record = logging.LogRecord(
        "duogate.lora", logging.WARNING, __file__, 1, "lost\nwindow", None, None
    )
    assert JournalFormatter().format(record) == "<4>duogate.lora: lost | window"


def test_under_journald_the_root_handler_uses_the_journal_format(monkeypatch, capsys):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    setup_logging("info")
    logging.getLogger("duogate").info("ready")
    assert capsys.readouterr().err == "<6>duogate: ready\n"


def test_on_a_terminal_lines_have_a_time_and_level(monkeypatch, capsys):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("warning", verbosity=1)  # -v means debug
    logging.getLogger("duogate").debug("detail")
    assert re.fullmatch(r"\d\d:\d\d:\d\d DEBUG   duogate: detail\n", capsys.readouterr().err)


def test_levels_from_config_and_at_runtime():
    setup_logging("error")
    assert logging.getLogger().level == logging.ERROR
    set_level("debug")
    assert logging.getLogger().level == logging.DEBUG
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        set_level("loud")
