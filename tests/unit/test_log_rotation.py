"""The log file rotates by size and keeps a fixed number of files (months of uptime, issue 13)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import Config, LogConfig
from agent.daemon import configure_logging


@pytest.fixture
def clean_root() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    for h in before:
        root.removeHandler(h)
    yield root
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in before:
        root.addHandler(h)
    root.setLevel(level)


def test_the_log_rotates_by_size_and_keeps_at_most_six_files(
    tmp_path: Path, clean_root: logging.Logger
) -> None:
    log_file = tmp_path / "logs" / "convert-agent.log"
    configure_logging(Config(log=LogConfig(file=log_file)), stderr=logging.NullHandler())
    (rotating,) = [
        h for h in clean_root.handlers if isinstance(h, logging.handlers.RotatingFileHandler)
    ]
    assert (rotating.maxBytes, rotating.backupCount) == (5 << 20, 5)  # 5 MiB x (1 + 5) files
    rotating.maxBytes = 20_000  # the same rollover, sooner: 30 MiB of lines would be slow
    line = "x" * 190
    for i in range(3000):  # ~600 kB: thirty rollovers
        logging.getLogger("agent").info("%06d %s", i, line)
    rotating.flush()
    files = sorted(p.name for p in log_file.parent.iterdir())
    assert files == ["convert-agent.log"] + [f"convert-agent.log.{n}" for n in range(1, 6)]
    for name in files:
        p = log_file.parent / name
        assert p.stat().st_size <= 20_000
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    # the newest lines are in the current file, the oldest ones are gone
    assert "002999" in log_file.read_text()
    assert not any("000000 " in (log_file.parent / n).read_text() for n in files)
