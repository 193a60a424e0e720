"""Progress bars for ``convert-agent run`` on a terminal (rich); plain log lines otherwise.

One ``rich.progress.Progress`` shows a bar per upload and download in flight; log lines are
printed above the bars through the same console, so the two never tear each other.
"""

from __future__ import annotations

import logging
import threading

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class TerminalProgress:
    """A ``scheduler.ProgressListener`` drawing rich bars on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def log_handler(self) -> logging.Handler:
        return RichHandler(console=self.console, show_path=False, markup=False)

    def __enter__(self) -> TerminalProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def transfer(self, key: str, label: str, done: int, total: int | None) -> None:
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                task = self._tasks[key] = self._progress.add_task(label, total=total)
            self._progress.update(task, completed=done, total=total)

    def transfer_done(self, key: str) -> None:
        with self._lock:
            task = self._tasks.pop(key, None)
            if task is not None:
                self._progress.remove_task(task)
