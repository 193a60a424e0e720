"""The tray icon for real: Xvfb, a system-tray host (stalonetray, or trayer where Debian has no
stalonetray), the agent started with ``run --tray`` against the emulator, and xdotool clicking.

The GTK test opens the icon's menu with a real right click and clicks its items with real left
clicks (positions from the menu window's geometry), then checks what each reached: Pause stops
intake (the store's ``paused`` flag, a ticket dropped afterwards is not sent), Resume lets it
through, Open dashboard opens the URL with its token, Quit ends the process with 0 within 5 s.
The Xorg test covers the fallback backend (an icon without a menu: a left click opens the
dashboard). When the X tools are missing or do not start, the tests fail under CI=true (naming
the Debian packages) and are skipped elsewhere.

The screenshot goes to the test's folder; with ``CONVERT_AGENT_SCREENSHOTS=1`` (or when
``docs/tray.png`` is missing) it also refreshes ``docs/tray.png``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from desktop_helpers import (
    agent_env,
    png_bytes,
    quiet_for,
    spawn,
    wait_exit,
    wait_for,
    write_config,
)

from agent.emulator import RunningEmulator
from agent.store import Store

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]
DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "tray.png"
TRAY_HOSTS = ("stalonetray", "trayer")
WIDTH, HEIGHT = 1024, 480

SYSTEM_PACKAGES = "apt-get install xvfb xauth xdotool x11-utils trayer python3-gi gir1.2-gtk-3.0"


@pytest.fixture(autouse=True)
def _x_tools(unavailable: Callable[[str, str], None]) -> None:
    """The tools these tests drive: missing ones fail the test under CI=true, else skip it."""
    if importlib.util.find_spec("pystray") is None:  # importing it needs a display: only look
        unavailable("pystray is not installed", "pip install -e '.[tray]' (scripts/test does)")
    missing = [t for t in ("Xvfb", "xdotool", "xwininfo") if shutil.which(t) is None]
    if not any(shutil.which(h) for h in TRAY_HOSTS):
        missing.append("stalonetray or trayer")
    if missing:
        unavailable(f"the tray test needs {', '.join(missing)}", SYSTEM_PACKAGES)


# --------------------------------------------------------------------------- the X desktop


@dataclass(frozen=True)
class Geometry:
    x: int
    y: int
    w: int
    h: int

    @property
    def center(self) -> tuple[int, int]:
        return self.x + self.w // 2, self.y + self.h // 2


_LINE = re.compile(
    r'^\s*(0x[0-9a-f]+) (?:"(?P<name>[^"]*)"|\(has no name\)).*?'
    r"(?P<w>\d+)x(?P<h>\d+)[+-]-?\d+[+-]-?\d+\s+\+(?P<x>-?\d+)\+(?P<y>-?\d+)\s*$"
)


class Desktop:
    def __init__(self, display: str) -> None:
        self.display = display
        self.env = {**os.environ, "DISPLAY": display}

    def run(self, *args: str) -> str:
        return subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=10, check=False
        ).stdout

    def windows(self, *, root_children_only: bool = False) -> list[tuple[str, str, Geometry]]:
        """(id, name, absolute geometry) of the windows, from ``xwininfo -root -tree``."""
        out = self.run("xwininfo", "-root", "-children" if root_children_only else "-tree")
        found = []
        for line in out.splitlines():
            m = _LINE.match(line)
            if m:
                geo = Geometry(int(m["x"]), int(m["y"]), int(m["w"]), int(m["h"]))
                found.append((m.group(1), m["name"] or "", geo))
        return found

    def viewable(self, wid: str) -> bool:
        return "IsViewable" in self.run("xwininfo", "-id", wid)

    def parent(self, wid: str) -> str:
        m = re.search(r"Parent window id: (0x[0-9a-f]+)", self.run("xwininfo", "-tree", "-id", wid))
        return m.group(1) if m else ""

    def root_id(self) -> str:
        m = re.search(r"Window id: (0x[0-9a-f]+)", self.run("xwininfo", "-root"))
        return m.group(1) if m else ""

    def tray_taken(self) -> bool:
        """Whether a tray host owns the system-tray selection (_NET_SYSTEM_TRAY_S<screen>): only
        then can an icon dock."""
        from Xlib import X
        from Xlib import display as xdisplay

        d = xdisplay.Display(self.display)
        try:
            atom = d.intern_atom(f"_NET_SYSTEM_TRAY_S{d.get_default_screen()}")
            owner = d.get_selection_owner(atom)
            return getattr(owner, "id", owner) != X.NONE
        finally:
            d.close()

    def click(self, x: int, y: int, button: int = 1) -> None:
        self.run("xdotool", "mousemove", str(x), str(y))  # no --sync: it hangs when already there
        time.sleep(0.15)  # let GTK see the pointer arrive before the press
        self.run("xdotool", "click", str(button))

    def screenshot(self, path: Path, crop: Geometry | None = None) -> bool:
        if shutil.which("import") is None:
            return False
        args = ["import", "-window", "root"]
        if crop is not None:
            args += ["-crop", f"{crop.w}x{crop.h}+{crop.x}+{crop.y}", "+repage"]
        subprocess.run([*args, str(path)], env=self.env, timeout=20, check=True)
        return True


def _free_display() -> int:
    for n in range(40, 200):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def desktop(unavailable: Callable[[str, str], None]) -> Iterator[Desktop]:
    """Xvfb on a free display with a system-tray host docked at the top right."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(5):  # another test run may take the same number first
            n = _free_display()
            xvfb = subprocess.Popen(
                ["Xvfb", f":{n}", "-screen", "0", f"{WIDTH}x{HEIGHT}x24", "-nolisten", "tcp"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            d = Desktop(f":{n}")
            deadline = time.monotonic() + 10
            while xvfb.poll() is None and not d.root_id() and time.monotonic() < deadline:
                time.sleep(0.05)
            if xvfb.poll() is None and d.root_id():
                procs.append(xvfb)
                break
            _stop(xvfb)
        else:
            unavailable("Xvfb did not start (five tries)", SYSTEM_PACKAGES)
        host = next(h for h in TRAY_HOSTS if shutil.which(h))
        if host == "stalonetray":
            cmd = ["stalonetray", "--geometry", "4x1-0+0", "--icon-size", "32", "-bg", "#e8e8e8"]
        else:
            cmd = [
                "trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel",
                "--width", "160", "--heighttype", "pixel", "--height", "32",
                "--transparent", "false", "--tint", "0xe8e8e8", "--SetDockType", "false",
            ]  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, env=d.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        deadline = time.monotonic() + 10
        while not d.tray_taken():  # the host takes the tray selection right after its window
            if time.monotonic() > deadline:
                unavailable(f"the tray host {host} did not start under Xvfb", SYSTEM_PACKAGES)
            time.sleep(0.05)
        yield d
    finally:
        for p in reversed(procs):
            _stop(p)


def _recorder(folder: Path) -> tuple[str, Path]:
    """A BROWSER command that records the URL it is asked to open."""
    log = folder / "opened.txt"
    script = folder / "browser"
    script.write_text(f'#!/bin/sh\necho "$1" >> "{log}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"{script} %s", log


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    inbox: Path
    state: Path
    log: Path
    opened: Path


async def _start_agent(
    tmp_path: Path, desktop: Desktop, emu: RunningEmulator, **extra_env: str
) -> Running:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "photo.png").write_bytes(png_bytes())
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, inbox, tmp_path / "state.db")
    browser, opened = _recorder(tmp_path)
    env = agent_env(DISPLAY=desktop.display, BROWSER=browser, NO_AT_BRIDGE="1", **extra_env)
    log = tmp_path / "run.log"
    proc = spawn(cfg, "run", "--tray", env=env, log=log)
    return Running(proc, inbox, tmp_path / "state.db", log, opened)


def _icon(desktop: Desktop) -> tuple[str, str, Geometry] | None:
    return next((w for w in desktop.windows() if w[1].startswith("convert-agent: ")), None)


def _paused_flag(state: Path) -> str | None:
    store = Store.open_readonly(state)
    try:
        return store.get_meta("paused")
    finally:
        store.close()


def _phase(state: Path, name: str) -> str | None:
    """The phase of the ticket ``name`` in the agent's store (None: not taken up yet)."""
    store = Store.open_readonly(state)
    try:
        return next((t.public()["phase"] for t in store.tickets() if t.name == name), None)
    finally:
        store.close()


def _log(r: Running) -> str:
    return r.log.read_text(errors="replace")[-4000:] if r.log.exists() else ""


# --------------------------------------------------------------------------- the menu (GTK)

# The menu as the tray builds it with a dashboard and a log file and no global problem:
# three status lines, a separator, six actions, a separator, Quit.
MENU = [
    "Active",
    "Done today",
    "Failed",
    "-",
    "Open folder",
    "Pause intake",
    "Retry failed",
    "Open dashboard",
    "Open log",
    "-",
    "Quit",
]
MENU_PADDING = 4  # GTK 3 Adwaita: menu border + padding, and a separator's height
SEPARATOR = 1


def _item_center(menu: Geometry, label: str) -> tuple[int, int]:
    """Where an item is: the items share the height the padding and separators leave."""
    items = [m for m in MENU if m != "-"]
    seps = len(MENU) - len(items)
    pitch = (menu.h - 2 * MENU_PADDING - seps * SEPARATOR) / len(items)
    index = MENU.index(label)
    before = MENU[:index]
    y = menu.y + MENU_PADDING + before.count("-") * SEPARATOR
    y += (len(before) - before.count("-")) * pitch + pitch / 2
    return menu.x + menu.w // 3, round(y)


async def _open_menu(desktop: Desktop, icon: Geometry) -> Geometry:
    """Right-click the icon and wait for its menu to show."""
    for _attempt in range(3):
        desktop.click(*icon.center, button=3)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for wid, _name, geo in desktop.windows(root_children_only=True):
                if geo.h > 150 and geo.w < WIDTH and desktop.viewable(wid):
                    return geo
            await asyncio.sleep(0.1)
    raise AssertionError("the tray menu did not open on a right click")


async def _pick(desktop: Desktop, icon: Geometry, label: str) -> Geometry:
    menu = await _open_menu(desktop, icon)
    desktop.click(*_item_center(menu, label))
    return menu


async def test_tray_icon_menu_clicks_reach_the_agent(
    tmp_path: Path,
    desktop: Desktop,
    make_emulator: MakeEmulator,
    unavailable: Callable[[str, str], None],
) -> None:
    emu = await make_emulator(processing_seconds=0.2)
    r = await _start_agent(tmp_path, desktop, emu)
    try:
        await wait_for(lambda: "tray icon shown" in _log(r), 20, f"the tray icon\n{_log(r)}")
        if "(gtk backend)" not in _log(r):
            unavailable(
                "the GTK backend is needed for a menu; the agent started another:\n" + _log(r),
                "apt-get install python3-gi gir1.2-gtk-3.0 (and a venv that sees them)",
            )
        await wait_for(lambda: _icon(desktop) is not None, 10, "the icon window")
        wid, _, icon = _icon(desktop)  # type: ignore[misc]
        assert desktop.parent(wid) != desktop.root_id(), "the icon is not docked in the tray"
        assert icon.y < 40 and icon.x > WIDTH - 200, icon  # inside the host at the top right

        # One ticket through, so the counts say something.
        (r.inbox / "one.job").write_text("input: photo.png\ntarget: jpg\n")
        await wait_for(lambda: (r.inbox / "one.job.done").exists(), 30, "one.job done")
        await wait_for(
            lambda: "1 done today" in ((_icon(desktop) or ("", "", None))[1]),
            10,
            "the tooltip to count it",
        )

        # Real right click: the menu opens; keep a screenshot of the icon and the menu.
        menu = await _open_menu(desktop, icon)
        await asyncio.sleep(0.3)
        crop = Geometry(menu.x - 24, 0, WIDTH - (menu.x - 24), menu.y + menu.h + 12)
        if desktop.screenshot(tmp_path / "tray.png", crop) and (
            os.environ.get("CONVERT_AGENT_SCREENSHOTS") == "1" or not DOCS_SHOT.exists()
        ):
            shutil.copyfile(tmp_path / "tray.png", DOCS_SHOT)
        desktop.click(*_item_center(menu, "Pause intake"))

        # Pause reached the agent: the flag is stored, the icon says so, intake stops.
        await wait_for(lambda: _paused_flag(r.state) == "1", 10, "paused = 1 in the store")
        await wait_for(lambda: "paused" in (_icon(desktop) or ("", "", ""))[1], 10, "paused title")
        jobs_before = emu.state.create_requests
        (r.inbox / "two.job").write_text("input: photo.png\ntarget: png\n")
        # the agent takes the ticket up and holds it: it is pending in the store, and stays so
        await wait_for(lambda: _phase(r.state, "two.job") == "pending", 10, "two.job pending")
        await quiet_for(
            1.0,
            lambda: (
                f"{emu.state.create_requests - jobs_before} job(s) created while paused"
                if emu.state.create_requests != jobs_before
                else f"two.job is {phase}"
                if (phase := _phase(r.state, "two.job")) != "pending"
                else None
            ),
            "a paused agent holds a new ticket",
        )
        assert not (r.inbox / "two.job.done").exists()

        # The same item now says Resume intake: it lets the waiting ticket through.
        await _pick(desktop, icon, "Pause intake")
        await wait_for(lambda: _paused_flag(r.state) is None, 10, "paused cleared")
        await wait_for(lambda: (r.inbox / "two.job.done").exists(), 30, "two.job done")

        # Open dashboard opens the URL with the run's token (BROWSER records it).
        await _pick(desktop, icon, "Open dashboard")
        await wait_for(lambda: r.opened.exists(), 10, "the browser to be asked")
        url = r.opened.read_text().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=\S+", url), url

        # Quit: the process ends cleanly within 5 s.
        await _pick(desktop, icon, "Quit")
        code = await wait_exit(r.proc, 5)
        assert code == 0, f"exit {code}\n{_log(r)}"
        assert _icon(desktop) is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            r.proc.kill()
        r.proc.wait()


async def test_xorg_backend_docks_opens_the_dashboard_on_click_and_stops(
    tmp_path: Path, desktop: Desktop, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    r = await _start_agent(tmp_path, desktop, emu, PYSTRAY_BACKEND="xorg")
    try:
        try:
            await wait_for(lambda: "tray icon shown (xorg backend)" in _log(r), 20, "the icon")
        except AssertionError as exc:  # say what the agent did (the log as it is by now)
            state = f"exit {r.proc.poll()}" if r.proc.poll() is not None else "still running"
            raise AssertionError(f"{exc}; agent {state}; its log:\n{_log(r)}") from None
        await wait_for(lambda: _icon(desktop) is not None, 10, "the icon window")
        wid, _, icon = _icon(desktop)  # type: ignore[misc]
        assert desktop.parent(wid) != desktop.root_id(), "the icon is not docked in the tray"
        try:
            await wait_for(
                lambda: "0 active" in (_icon(desktop) or ("", "", ""))[1],
                10,
                "the counts as its name",
            )
        except AssertionError as exc:  # what the icon is called now, and what the agent said
            name = (_icon(desktop) or ("", "", ""))[1]
            raise AssertionError(f"{exc} (name now {name!r}); its log:\n{_log(r)}") from None
        # No menu on plain X: a click opens the dashboard. On a loaded machine the first click
        # can land before the icon listens for buttons, so click again a few times.
        for _ in range(4):
            desktop.click(*icon.center)
            with contextlib.suppress(AssertionError):
                await wait_for(lambda: r.opened.exists(), 4, "the browser to be asked")
                break
        await wait_for(lambda: r.opened.exists(), 4, "the browser to be asked")
        assert "token=" in r.opened.read_text()
        r.proc.terminate()
        code = await wait_exit(r.proc, 5)
        assert code == 0, f"exit {code}\n{_log(r)}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            r.proc.kill()
        r.proc.wait()
