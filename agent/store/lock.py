"""One agent per state file: an exclusive ``flock`` on ``STATE.lock`` beside the database."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from agent.errors import ConfigError


class StateLock:
    """One agent per state file: an exclusive ``flock`` on ``STATE.lock`` holding our pid."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        # Private like the database beside it (the lock is taken before the store is opened).
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
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
