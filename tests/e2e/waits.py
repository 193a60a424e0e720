"""Waits for "nothing else happens": an observable event first, then a short bounded quiet check.

A fixed ``sleep`` that stands for "and nothing else happens" proves little (the test passes when
the agent was merely slow to misbehave) and costs its full length on every run. Instead a test
waits for the event that shows the agent has acted (a file, a log line, a record in the state
database, a request in the emulator's log), then polls the observable the defect would change for
a bounded window and fails at the first sign of it, naming what it saw.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: how often a quiet check looks (the same pace as the harness's waits)
POLL = 0.05
#: the emulator's routes (its request log's ``route``) that do work for a ticket: a new job, an
#: input, a start, an output fetched
WORK_ROUTES = frozenset({"create", "input", "upload", "start", "download"})


async def stays_quiet(
    seconds: float, problem: Callable[[], str | None], what: str, *, until: float | None = None
) -> None:
    """Poll ``problem()`` for ``seconds`` (or until the monotonic time ``until``, whichever is
    later) and fail at once when it names a problem (a non-empty string): ``what`` says which
    thing must not happen. The last look is taken after the window has closed."""
    started = time.monotonic()
    end = max(started + seconds, until if until is not None else 0.0)
    while True:
        found = problem()
        if found:
            took = time.monotonic() - started
            raise AssertionError(f"{what}: after {took:.2f}s of the quiet window, {found}")
        if time.monotonic() >= end:
            return
        await asyncio.sleep(min(POLL, max(0.0, end - time.monotonic())))


def any_of(*checks: Callable[[], str | None]) -> Callable[[], str | None]:
    """One problem check out of several: the first problem any of them names."""

    def check() -> str | None:
        for c in checks:
            found = c()
            if found:
                return found
        return None

    return check


def same(label: str, read: Callable[[], Any], expected: Any) -> Callable[[], str | None]:
    """A problem when ``read()`` is no longer ``expected``."""

    def check() -> str | None:
        now = read()
        return None if now == expected else f"{label} is {now!r}, expected {expected!r}"

    return check


def files_stay(
    folder: Path, expected: Iterable[str], *, ignore: Iterable[str] = ()
) -> Callable[[], str | None]:
    """A problem when the files under ``folder`` (relative names, recursive, hidden ones included,
    ``ignore`` left out) are not exactly ``expected``: something was added, renamed or removed."""
    want, skip = set(expected), set(ignore)

    def check() -> str | None:
        have = {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()} - skip
        if have == want:
            return None
        return f"files in {folder.name}: added {sorted(have - want)}, gone {sorted(want - have)}"

    return check


def no_new_requests(
    emulator: Any, *, since: int, routes: Iterable[str] | None = None
) -> Callable[[], str | None]:
    """A problem when the emulator's request log has a request after its first ``since`` entries
    (only requests to ``routes`` count when given, e.g. ``{"create", "start"}``)."""
    wanted = set(routes) if routes is not None else None

    def check() -> str | None:
        new = [
            f"{r.method} {r.path} ({r.route})"
            for r in emulator.state.requests[since:]
            if wanted is None or r.route in wanted
        ]
        return f"the agent sent {new}" if new else None

    return check


def log_mark(log: Path) -> int:
    """Where the agent's log ends now: pass it to ``log_text_since``."""
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def log_text_since(log: Path, mark: int) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def no_log_line(log: Path, mark: int, *texts: str) -> Callable[[], str | None]:
    """A problem when the agent's log, after ``mark``, has a line with one of ``texts``."""

    def check() -> str | None:
        for line in log_text_since(log, mark).splitlines():
            if any(t in line for t in texts):
                return f"the agent logged {line.strip()!r}"
        return None

    return check
