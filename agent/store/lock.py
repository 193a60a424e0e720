"""One agent per state file: an exclusive lock on ``STATE.lock`` beside the database
(``flock`` on POSIX, a byte-range lock on Windows: ``agent.platform.lock_exclusive``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from agent import platform
from agent.errors import ConfigError


class StateLock:
    """One agent per state file: an exclusive lock on ``STATE.lock`` holding our pid.

    ``lock`` takes the lock on an open descriptor (the platform's, or a stand-in in tests)."""

    def __init__(
        self, db_path: Path, *, lock: Callable[[int], None] = platform.lock_exclusive
    ) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._lock = lock
        self._fd: int | None = None

    def acquire(self) -> None:
        # Private like the database beside it (the lock is taken before the store is opened).
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | platform.O_BINARY, 0o600)
        try:
            self._lock(fd)
        except OSError as exc:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in platform.LOCK_HELD:
                raise ConfigError(
                    f"another convert-agent (pid {other}) is already running with the state file "
                    f"{self.path.with_suffix('')}: stop it first, or give this one its own "
                    "--state file"
                ) from exc
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
