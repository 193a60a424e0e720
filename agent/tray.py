"""The tray icon: a pystray front end over the ``Agent`` facade.

The tray's loop owns the main thread (macOS requires it, GTK expects it); the agent runs beside it
in a thread with its own asyncio loop. The tray reads the agent only through ``snapshot()``, which a
small task on the agent's loop re-reads when a ticket changes (debounced) or every 30 s, and acts
only through the facade (``pause``, ``resume``, ``retry``, ``request_stop``) via ``submit``. Quit
stops the agent; when the agent's thread ends, for whatever reason, the icon goes away and
``run_with_tray`` returns the agent's exit code.

The icon is drawn with Pillow for four states (idle, working, needs attention, paused; a red dot
when a paused agent also needs attention); the tooltip and the menu's status lines say the counts.

Backends (Linux): ``PYSTRAY_BACKEND`` wins; else AppIndicator or GTK when PyGObject can be imported
(from the environment, or the system's own ``gi`` when its binary matches this Python), else plain
Xorg (an icon without a menu: a click opens the dashboard). Must not touch the store, the scheduler
or the event loop's objects other than through the facade.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import webbrowser
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from agent import platform as platform_layer

if TYPE_CHECKING:
    from agent.daemon import Agent

log = logging.getLogger("agent.tray")

APP = "convert-agent"
REFRESH_SECONDS = 30.0  # also without changes: "done today" rolls over, quota waits end
DEBOUNCE_SECONDS = 0.3  # a burst of ticket changes is one refresh
SHOW_RETRY_SECONDS = 0.5  # the icon could not be updated (its loop not up yet): again soon
CLOSE_TIMEOUT = 2.0  # after the agent stopped, the icon's loop has this long to end
ACTIVE_PHASES = ("pending", "creating", "uploading", "starting", "processing", "downloading")

STATES = ("idle", "working", "attention", "paused")
COLORS = {
    "idle": (43, 138, 62),
    "working": (47, 116, 208),
    "attention": (217, 72, 15),
    "paused": (108, 117, 125),
}


class TrayUnavailable(Exception):
    """No tray can be shown here (no display, no pystray, the backend did not start)."""


# --------------------------------------------------------------------------- what it shows (pure)


@dataclass(frozen=True)
class Summary:
    state: str = "idle"  # idle | working | attention | paused
    active: int = 0
    done_today: int = 0
    failed: int = 0
    paused: bool = False
    problem: str | None = None  # an auth or quota problem, in words
    attention: bool = False

    def tooltip(self) -> str:
        parts = [f"{self.active} active", f"{self.done_today} done today"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        text = f"{APP}: " + ", ".join(parts)
        if self.paused:
            text += "; paused"
        if self.problem:
            text += f"; {self.problem}"
        return text


def summarize(snapshot: Mapping[str, Any], now: float) -> Summary:
    """The tray's view of an agent snapshot (``Agent.snapshot()``) at ``now``."""
    counts: Mapping[str, int] = snapshot.get("counts") or {}
    active = sum(int(counts.get(p, 0)) for p in ACTIVE_PHASES)
    failed = int(counts.get("failed", 0))
    midnight = dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    since = midnight.timestamp()
    done_today = sum(
        1
        for t in snapshot.get("tickets") or ()
        if t.get("phase") == "done" and (t.get("finished_at") or 0) >= since
    )
    problem = None
    if snapshot.get("problem"):
        p = snapshot["problem"]
        problem = str(p.get("message") or p.get("title") or "needs attention")
    elif (snapshot.get("quota_until") or 0) > now:
        until = dt.datetime.fromtimestamp(snapshot["quota_until"]).strftime("%H:%M")
        problem = f"conversion quota used up until {until}"
    paused = bool(snapshot.get("paused"))
    attention = bool(failed or problem)
    if paused:
        state = "paused"
    elif attention:
        state = "attention"
    elif active:
        state = "working"
    else:
        state = "idle"
    return Summary(state, active, done_today, failed, paused, problem, attention)


def draw_icon(state: str, *, badge: bool = False, size: int = 64) -> Image.Image:
    """The icon for a state: a coloured disc with a white glyph (drawn 4× and scaled down, so
    the edges are smooth); ``badge`` adds a red dot (needs attention while paused)."""
    s = size * 4
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse((4, 4, s - 4, s - 4), fill=(*COLORS[state], 255))
    white = (255, 255, 255, 255)
    u = s / 16  # one sixteenth of the icon
    if state == "idle":  # a check mark
        d.line([(4 * u, 8.5 * u), (7 * u, 11.5 * u), (12 * u, 5 * u)], fill=white, width=int(2 * u))
    elif state == "working":  # an arrow down into a tray
        d.rectangle((7 * u, 3.5 * u, 9 * u, 8 * u), fill=white)
        d.polygon([(4.5 * u, 7.5 * u), (11.5 * u, 7.5 * u), (8 * u, 11 * u)], fill=white)
        d.rectangle((4 * u, 11.5 * u, 12 * u, 13 * u), fill=white)
    elif state == "attention":  # an exclamation mark
        d.rounded_rectangle((7 * u, 3 * u, 9 * u, 9.5 * u), radius=u, fill=white)
        d.ellipse((7 * u, 10.5 * u, 9 * u, 12.5 * u), fill=white)
    else:  # paused: two bars
        d.rectangle((5 * u, 4.5 * u, 7 * u, 11.5 * u), fill=white)
        d.rectangle((9 * u, 4.5 * u, 11 * u, 11.5 * u), fill=white)
    if badge:
        red = (*COLORS["attention"], 255)
        d.ellipse((s - 6 * u, 0, s, 6 * u), fill=red, outline=white, width=4)
    return img.resize((size, size), Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------- desktop helpers


def display_available(
    env: Mapping[str, str] | None = None, platform: str = platform_layer.NAME
) -> bool:
    """Whether a desktop could show an icon (macOS and Windows always can)."""
    env = os.environ if env is None else env
    if platform in ("darwin", "win32"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def open_path(target: str | Path, platform: str = platform_layer.NAME) -> None:
    """Open a folder or file with the desktop's default application, without waiting."""
    if platform == "win32":
        platform_layer.start_file(target)
        return
    opener = "open" if platform == "darwin" else "xdg-open"
    try:
        subprocess.Popen(
            [opener, str(target)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        log.warning("cannot open %s: %s is not available (%s)", target, opener, exc.strerror)


def _borrow_system_gi() -> ModuleType | None:
    """The distribution's PyGObject (python3-gi), when this Python has none of its own and the
    system's binary was built for this very Python version (a venv on Debian or Fedora)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ""
    minor = f"python3.{sys.version_info.minor}"
    for site in (
        "/usr/lib/python3/dist-packages",
        f"/usr/lib64/{minor}/site-packages",
        f"/usr/lib/{minor}/site-packages",
    ):
        pkg = Path(site) / "gi"
        if not (pkg / f"_gi{suffix}").is_file():
            continue
        spec = importlib.util.spec_from_file_location(
            "gi", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
        )
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules["gi"] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules["gi"]
            log.debug("the system's PyGObject at %s does not load: %s", pkg, exc)
            continue
        return module
    return None


def choose_backend(env: Mapping[str, str] | None = None) -> str | None:
    """The pystray backend for this desktop (Linux/BSD), or None to let pystray decide."""
    env = os.environ if env is None else env
    if env.get("PYSTRAY_BACKEND") or platform_layer.NAME in ("darwin", "win32"):
        return env.get("PYSTRAY_BACKEND") or None
    gi: ModuleType | None
    try:
        gi = importlib.import_module("gi")
    except ImportError:
        gi = _borrow_system_gi()
    if gi is not None:
        for name in ("AyatanaAppIndicator3", "AppIndicator3"):
            with contextlib.suppress(ValueError, AttributeError):
                gi.require_version(name, "0.1")
                gi.require_version("Gtk", "3.0")
                if _gtk_starts():
                    return "appindicator"
        with contextlib.suppress(ValueError, AttributeError, ImportError):
            gi.require_version("Gtk", "3.0")
            if _gtk_starts():
                return "gtk"
    return "xorg" if env.get("DISPLAY") else None


def _gtk_starts() -> bool:
    try:
        glib: Any = importlib.import_module("gi.repository.GLib")
        glib.set_prgname(APP)  # the windows' class and name, also under `python -m agent`
        glib.set_application_name(APP)
        gtk: Any = importlib.import_module("gi.repository.Gtk")
        try:
            ok = gtk.init_check()
        except TypeError:  # older bindings want argv
            ok = gtk.init_check(sys.argv)
    except (ImportError, ValueError, RuntimeError):
        return False
    return bool(ok[0] if isinstance(ok, tuple) else ok)


def load_pystray(env: Mapping[str, str] | None = None) -> ModuleType:
    """Import pystray with the backend that works here; TrayUnavailable when none does."""
    env = os.environ if env is None else env
    if not display_available(env):
        raise TrayUnavailable("no display (DISPLAY and WAYLAND_DISPLAY are not set)")
    backend = choose_backend(env)
    if backend is not None:
        os.environ["PYSTRAY_BACKEND"] = backend  # read by pystray when it is imported
    try:
        pystray = importlib.import_module("pystray")
    except ImportError as exc:
        raise TrayUnavailable(
            f"pystray cannot be used ({exc}); install it with `pip install 'convert-agent[tray]'`"
        ) from exc
    except Exception as exc:  # a backend failing at import (e.g. no X server behind DISPLAY)
        raise TrayUnavailable(f"the tray backend {backend or ''} does not start: {exc}") from exc
    return pystray


# --------------------------------------------------------------------------- the tray


class Tray:
    """The icon and its menu for one agent."""

    def __init__(
        self, agent: Agent, pystray: ModuleType, *, opener: Callable[[str], None] = open_path
    ) -> None:
        self.agent = agent
        self.pystray = pystray
        self.opener = opener
        self.summary = Summary()
        self.stopping = False
        self._drawn: tuple[str, bool] | None = None
        self._title = ""
        self._kick: asyncio.Event | None = None
        try:
            self.icon = pystray.Icon(APP, draw_icon("idle"), f"{APP}: starting", menu=self.menu())
        except Exception as exc:  # e.g. Xlib cannot open the display
            raise TrayUnavailable(f"the tray icon cannot be created: {exc}") from exc
        self.backend = type(self.icon).__module__.rsplit("_", 1)[-1]
        if self.backend == "xorg":
            _listen_for_clicks(self.icon)

    # -- the menu

    def menu(self) -> Any:
        item, sep = self.pystray.MenuItem, self.pystray.Menu.SEPARATOR
        s = self._summary  # read at every menu build
        folders = [f.path for f in self.agent.cfg.folders]
        if len(folders) == 1:
            open_folders = item(
                "Open folder", self._open(folders[0]), default=lambda _: not self._dashboard()
            )
        else:
            open_folders = item(
                "Open folder",
                self.pystray.Menu(*(item(str(p), self._open(p)) for p in folders)),
            )
        return self.pystray.Menu(
            item(lambda _: f"Active: {s().active}", None, enabled=False),
            item(lambda _: f"Done today: {s().done_today}", None, enabled=False),
            item(lambda _: f"Failed: {s().failed}", None, enabled=False),
            item(
                lambda _: f"⚠ {s().problem}",
                None,
                enabled=False,
                visible=lambda _: bool(s().problem),
            ),
            sep,
            open_folders,
            item(lambda _: "Resume intake" if s().paused else "Pause intake", self._toggle_pause),
            item("Retry failed", self._retry, enabled=lambda _: s().failed > 0),
            item(
                "Open dashboard",
                self._open_dashboard,
                default=lambda _: bool(self._dashboard()),
                visible=lambda _: bool(self._dashboard()),
            ),
            item(
                "Open log",
                self._open(self.agent.cfg.log.file),
                visible=lambda _: self.agent.cfg.log.file is not None,
            ),
            sep,
            item("Quit", self._quit),
        )

    def _summary(self) -> Summary:
        return self.summary

    def _dashboard(self) -> str | None:
        dash = getattr(self.agent, "dashboard", None)
        url = getattr(dash, "open_url", None) if dash is not None else None
        if url is None:  # before the dashboard existed, the tray read this attribute
            url = getattr(self.agent, "dashboard_url", None)
        return url if isinstance(url, str) else None

    # -- actions (called on the tray's thread)

    def _open(self, target: Path | None) -> Callable[[], None]:
        def action() -> None:
            if target is not None:
                self.opener(str(target))

        return action

    def _open_dashboard(self) -> None:
        url = self._dashboard()
        if url:
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()

    def _toggle_pause(self) -> None:
        paused = self.summary.paused
        if paused:
            self._call(self.agent.resume(), "resume")
        else:
            self._call(self.agent.pause(), "pause")
        self.summary = _replace_paused(self.summary, not paused)  # the menu answers at once
        self._show()

    def _retry(self) -> None:
        self._call(self.agent.retry(None), "retry")

    def _quit(self) -> None:
        self.stopping = True
        with contextlib.suppress(Exception):
            self.icon.title = f"{APP}: stopping"
        self.agent.request_stop()

    def _call(self, coro: Any, what: str) -> None:
        try:
            future = self.agent.submit(coro)
        except RuntimeError:
            log.warning("tray: %s: the agent is not running", what)
            return
        future.add_done_callback(lambda f: self._done(f, what))

    def _done(self, future: Any, what: str) -> None:
        if future.exception() is not None:
            log.warning("tray: %s failed: %s", what, future.exception())
        self.kick()

    # -- refreshing

    def on_change(self, _record: Any) -> None:
        """Agent listener (on the agent's loop): something changed, refresh soon."""
        if self._kick is not None:
            self._kick.set()

    def kick(self) -> None:
        """Refresh soon; from any thread."""
        loop, kick = self.agent.loop, self._kick
        if loop is not None and kick is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(kick.set)

    async def watch(self) -> None:
        """On the agent's loop until it ends: re-read the snapshot when told, or now and then."""
        self._kick = asyncio.Event()
        first = True
        while True:
            self._kick.clear()
            try:
                snap = await self.agent.snapshot()
            except Exception as exc:
                log.debug("tray: no snapshot: %s", exc)
            else:
                self.summary = summarize(snap, time.time())
                try:
                    self._show()
                except Exception as exc:  # e.g. pystray's Xorg loop not running yet (it learns
                    # its own thread only after it called setup): draw it all again soon
                    log.debug("tray: not shown yet: %s", exc)
                    self._drawn, self._title = None, ""
                    await asyncio.sleep(SHOW_RETRY_SECONDS)
                    continue
                if first:
                    # Drawn once more a second after the first time: under load the Xorg icon
                    # sometimes kept its "starting" name after the first update (seen about once
                    # in 25 runs beside a soak; the cause inside pystray/python-xlib is not
                    # found), and an update is otherwise only sent when something changes.
                    first = False
                    self._drawn, self._title = None, ""
                    await asyncio.sleep(1.0)
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), REFRESH_SECONDS)
            await asyncio.sleep(DEBOUNCE_SECONDS)

    def _show(self) -> None:
        """Bring the icon, tooltip and menu up to date (pystray queues them to its own loop)."""
        if self.stopping:
            return
        s = self.summary
        look = (s.state, s.attention and s.state != "attention")
        if look != self._drawn:
            self._drawn = look
            self.icon.icon = draw_icon(look[0], badge=look[1])
        title = s.tooltip()
        if title != self._title:
            self._title = title
            try:
                self.icon.title = title
            except UnicodeError:  # the Xorg backend sets the window name in Latin-1
                self.icon.title = title.encode("latin-1", "replace").decode("latin-1")
        self.icon.update_menu()


def _listen_for_clicks(icon: Any) -> None:
    """pystray's Xorg backend (0.19) handles button presses but never asks X for them; ask."""
    try:
        xlib_x = importlib.import_module("Xlib.X")
        mask = xlib_x.ExposureMask | xlib_x.StructureNotifyMask | xlib_x.ButtonPressMask
        icon._window.change_attributes(event_mask=mask)
        icon._display.flush()
    except Exception as exc:  # another pystray version: the icon still shows
        log.debug("tray: cannot listen for clicks on the Xorg icon: %s", exc)


def _replace_paused(s: Summary, paused: bool) -> Summary:
    if paused:
        state = "paused"
    else:
        state = "attention" if s.attention else "working" if s.active else "idle"
    return Summary(state, s.active, s.done_today, s.failed, paused, s.problem, s.attention)


# --------------------------------------------------------------------------- running


def run_with_tray(agent: Agent, tray: Tray, *, once: bool = False) -> int:
    """Run the agent in a thread and the tray's loop here (the main thread) until the agent
    stops; return its exit code (or raise what it raised)."""
    result: dict[str, Any] = {}

    def agent_main() -> None:
        # SIGINT/SIGTERM must reach the main thread: a signal the kernel hands to this thread
        # (or to a thread started from it, which inherits the mask) leaves the handler waiting
        # until the main thread runs Python again, and pystray's Xorg loop sleeps in select()
        # until the next X event. Blocked here, they always interrupt that select(). (The
        # notification commands run from here inherit the mask: short, and SIGKILLed at their
        # timeout; the menu's openers start from the main thread.)
        platform_layer.block_stop_signals()
        try:
            result["code"] = asyncio.run(agent.run(once=once))
        except BaseException as exc:  # handed to the main thread
            result["error"] = exc
        finally:
            tray.stopping = True
            # The agent has stopped cleanly (state closed, lock released); only the icon is
            # left. pystray's Xorg loop can miss its own stop now and then, so do not wait
            # for it forever.
            guard = threading.Timer(CLOSE_TIMEOUT, _exit_stuck, (result,))
            guard.daemon = True
            guard.start()
            tray.icon.stop()

    worker = threading.Thread(target=agent_main, name="agent")

    def stop_on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        agent.request_stop()

    def setup(icon: Any) -> None:
        icon.visible = True
        if tray.backend in ("gtk", "appindicator"):
            # pystray gives SIGINT back to the default (kill) when its GTK loop starts; take
            # it back on that loop's thread so Ctrl+C stops the agent cleanly.
            glib: Any = importlib.import_module("gi.repository.GLib")

            def take_sigint() -> bool:
                signal.signal(signal.SIGINT, stop_on_signal)
                return False  # once

            glib.idle_add(take_sigint)
        worker.start()
        while not agent.ready.wait(0.1):
            if not worker.is_alive():
                return
        tray.kick()
        with contextlib.suppress(RuntimeError):
            agent.submit(tray.watch()).add_done_callback(_log_end)
        log.info("tray icon shown (%s backend)", tray.backend)

    agent.listeners.append(tray.on_change)
    # The agent's own handlers cannot be installed from its thread: these stop it instead, the
    # same way as Quit (SIGINT/SIGTERM; on Windows Ctrl-C and Ctrl-Break, SIGBREAK).
    for sig in platform_layer.stop_signals():
        signal.signal(sig, stop_on_signal)
    try:
        tray.icon.run(setup=setup)
    except Exception as exc:  # pystray's GTK clean-up fails without a notification service
        log.log(logging.DEBUG if tray.stopping else logging.WARNING, "tray loop: %s", exc)
    if worker.ident is None:
        raise TrayUnavailable("the tray's loop ended before it started")
    if worker.is_alive():
        agent.request_stop()  # the icon went away first (e.g. the desktop session ended)
        worker.join()
    if "error" in result:
        raise result["error"]
    return int(result.get("code", 0))


def _exit_stuck(result: Mapping[str, Any]) -> None:
    log.warning("the tray icon did not close within %.0f s; exiting anyway", CLOSE_TIMEOUT)
    logging.shutdown()
    os._exit(1 if "error" in result else int(result.get("code", 0)))


def _log_end(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("the tray stopped refreshing", exc_info=future.exception())


def start_tray(agent: Agent, want: bool | None, notifications: Any = None) -> Tray | None:
    """The tray for ``run``: ``want`` True (``--tray``) raises TrayUnavailable when no tray can be
    shown, None (auto) falls back to headless and says so in one log line, False is headless."""
    if want is False:
        return None
    try:
        tray = Tray(agent, load_pystray())
    except TrayUnavailable as exc:
        if want:
            raise
        log.info("running headless, without a tray icon: %s", exc)
        return None
    if notifications is not None and platform_layer.IS_WINDOWS and tray.icon.HAS_NOTIFICATION:
        notifications.balloon = tray.icon.notify
    return tray
