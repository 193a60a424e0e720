"""Desktop notifications when tickets end: batched, then sent through the platform's service.

A burst of tickets finishing together becomes one notification ("12 tickets done"), not twelve:
finished tickets are collected until none has ended for ``batch_seconds`` (at most ``MAX_WAIT``
after the first). Failures get their own notification with the plain error text, at critical
urgency. Delivery: ``notify-send`` (libnotify) or ``gdbus`` to org.freedesktop.Notifications on
Linux and the BSDs, ``osascript`` on macOS, the tray icon's balloon on Windows; where none works the
notification becomes a log line, and a delivery failure is logged once, not per notification.

The batching (``Batcher``, ``compose``) is pure and clock-injected. This module reads tickets only
from the records the agent hands its listeners; it must not touch the store or the scheduler.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent import platform as platform_layer
from agent.models import Phase

if TYPE_CHECKING:
    from agent.daemon import Agent
    from agent.store import TicketRecord

log = logging.getLogger("agent.notify")

APP = "convert-agent"
MAX_WAIT = 10.0  # a steady trickle of endings still gets a notification this often
MAX_NAMES = 5  # names listed in the body of a batched notification
DELIVERY_TIMEOUT = 5.0


@dataclass(frozen=True)
class Ended:
    """One ticket that reached done or failed."""

    name: str
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    critical: bool = False

    def line(self) -> str:
        return f"{self.title}: {self.body}" if self.body else self.title


def compose(ended: Sequence[Ended]) -> list[Message]:
    """One message for the tickets done and one for the tickets failed (each if any)."""
    out: list[Message] = []
    done = [e for e in ended if e.ok]
    failed = [e for e in ended if not e.ok]
    if len(done) == 1:
        out.append(Message(f"{done[0].name} done", ""))
    elif done:
        out.append(Message(f"{len(done)} tickets done", _names(done)))
    if len(failed) == 1:
        out.append(Message(f"{failed[0].name} failed", failed[0].error or "", critical=True))
    elif failed:
        out.append(Message(f"{len(failed)} tickets failed", _names(failed), critical=True))
    return out


def _names(ended: Sequence[Ended]) -> str:
    names = [e.name for e in ended[:MAX_NAMES]]
    more = len(ended) - len(names)
    return ", ".join(names) + (f" and {more} more" if more else "")


class Batcher:
    """Collects endings until it has been quiet for ``window`` seconds (or ``max_wait`` passed
    since the first one). Pure: the caller passes the time."""

    def __init__(self, window: float = 2.0, max_wait: float = MAX_WAIT) -> None:
        self.window = window
        self.max_wait = max(max_wait, window)
        self._items: list[Ended] = []
        self._first = self._last = 0.0

    def add(self, item: Ended, now: float) -> None:
        if not self._items:
            self._first = now
        self._items.append(item)
        self._last = now

    def due_at(self) -> float | None:
        """When the batch should go out, or None when it is empty."""
        if not self._items:
            return None
        return min(self._last + self.window, self._first + self.max_wait)

    def take(self, now: float) -> list[Ended]:
        """The batch if it is due at ``now`` (and empties it), else nothing."""
        due = self.due_at()
        if due is None or now < due:
            return []
        items, self._items = self._items, []
        return items


def ended_from(rec: TicketRecord) -> Ended | None:
    if rec.phase is Phase.DONE:
        return Ended(rec.name, True)
    if rec.phase is Phase.FAILED:
        error = rec.error or {}
        return Ended(rec.name, False, str(error.get("message") or error.get("title") or ""))
    return None


# --------------------------------------------------------------------------- delivery

Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


def desktop_command(
    msg: Message,
    *,
    platform: str = platform_layer.NAME,
    env: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> list[str] | None:
    """The command that shows ``msg`` on this desktop, or None when there is no way."""
    env = os.environ if env is None else env
    if platform == "darwin":
        if which("osascript") is None:
            return None
        # The texts go in as arguments, never into the script: no quoting to get wrong.
        return [
            "osascript",
            "-e",
            "on run argv",
            "-e",
            "display notification (item 2 of argv) with title (item 1 of argv)",
            "-e",
            "end run",
            msg.title,
            msg.body,
        ]
    if platform == "win32":
        return None  # the tray icon's balloon (see Notifications.balloon), else the log
    if not any(env.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS")):
        return None
    body = html.escape(msg.body, quote=False)  # the body may be read as markup
    notify_send = which("notify-send")
    if notify_send is not None:
        urgency = "critical" if msg.critical else "normal"
        return [notify_send, f"--app-name={APP}", f"--urgency={urgency}", msg.title, body]
    gdbus = which("gdbus")
    if gdbus is not None:
        hints = "{'urgency': <byte 2>}" if msg.critical else "{}"
        return [
            gdbus,
            "call",
            "--session",
            "--dest=org.freedesktop.Notifications",
            "--object-path=/org/freedesktop/Notifications",
            "--method=org.freedesktop.Notifications.Notify",
            APP,
            "0",
            "",
            msg.title,
            body,
            "[]",
            hints,
            "-1",
        ]
    return None


# Endings remembered, so that one told again (its ticket filed just after) is shown once; an
# ending is told again within moments, so the newest few suffice over months of uptime.
SEEN_ENDINGS = 1024


class Notifications:
    """Listens to an agent and notifies the desktop when its tickets end."""

    def __init__(
        self,
        agent: Agent,
        *,
        batch_seconds: float = 2.0,
        clock: Callable[[], float] | None = None,
        run: Runner = subprocess.run,
    ) -> None:
        self.agent = agent
        self.batcher = Batcher(batch_seconds)
        self.clock = clock
        self.run = run
        self.balloon: Callable[[str, str], None] | None = None  # the tray's notify, if any
        self._seen: dict[int, tuple[Phase, float | None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._broken = False
        agent.listeners.append(self.on_change)

    def _now(self, loop: asyncio.AbstractEventLoop) -> float:
        return self.clock() if self.clock is not None else loop.time()

    def on_change(self, rec: TicketRecord) -> None:
        """Agent listener (called on the agent's loop): note tickets that just ended."""
        if not rec.phase.terminal:
            self._seen.pop(rec.id, None)  # a ticket going on is no ending to remember
            return
        key = (rec.phase, rec.finished_at)
        if self._seen.get(rec.id) == key:
            return  # the same ending told again (e.g. after the ticket file was renamed)
        self._seen[rec.id] = key
        while len(self._seen) > SEEN_ENDINGS:  # bounded: the oldest endings are forgotten
            del self._seen[next(iter(self._seen))]
        ended = ended_from(rec)
        if ended is None:
            return
        loop = asyncio.get_running_loop()
        self.batcher.add(ended, self._now(loop))
        self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self.batcher.due_at()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is not None:
            self._timer = loop.call_later(max(0.0, due - self._now(loop)), self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        items = self.batcher.take(self._now(loop))
        if not items:
            self._arm(loop)
            return
        for msg in compose(items):
            loop.run_in_executor(None, self.deliver, msg)

    def close(self) -> None:
        """Send what is still collected now (the agent has stopped; its loop is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items = self.batcher.take(float("inf"))
        for msg in compose(items):
            self.deliver(msg)

    def deliver(self, msg: Message) -> None:
        """Show one message (blocking; runs in a worker thread)."""
        if self.balloon is not None:
            try:
                self.balloon(msg.body or msg.title, msg.title)
                return
            except Exception as exc:  # a tray backend without balloons
                log.debug("tray balloon failed: %s", exc)
        cmd = None if self._broken else desktop_command(msg)
        if cmd is not None:
            try:
                done = self.run(cmd, capture_output=True, timeout=DELIVERY_TIMEOUT, check=False)
                if done.returncode == 0:
                    return
                why = (done.stderr or b"").decode(errors="replace").strip() or (
                    f"exit {done.returncode}"
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                why = str(exc)
            self._broken = True
            log.warning(
                "desktop notifications do not work (%s: %s); they go to the log instead",
                os.path.basename(cmd[0]),
                why[:200],
            )
        log.info("notification: %s", msg.line())
