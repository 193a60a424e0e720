"""The tray without a display: what it shows (pure), its icons, its menu's actions through a fake
pystray, and `run` choosing headless or refusing `--tray` when there is no display."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from desktop_helpers import agent_env, quiet_for, wait_for, write_config

from agent.config import Config, FolderConfig, LogConfig
from agent.emulator import RunningEmulator
from agent.tray import (
    Summary,
    Tray,
    TrayUnavailable,
    choose_backend,
    display_available,
    draw_icon,
    load_pystray,
    start_tray,
    summarize,
)

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]
NOW = dt.datetime(2026, 5, 4, 15, 0).timestamp()
COUNTS = {"pending": 0, "creating": 0, "uploading": 0, "starting": 0, "processing": 0}


def snap(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "paused": False,
        "problem": None,
        "quota_until": None,
        "counts": {**COUNTS, "downloading": 0, "done": 0, "failed": 0, "canceled": 0},
        "tickets": [],
    }
    base.update(kw)
    return base


def test_summary_counts_active_done_today_and_failed() -> None:
    today, yesterday = NOW - 3600, NOW - 86400
    s = summarize(
        snap(
            counts={**COUNTS, "uploading": 2, "processing": 1, "downloading": 1, "failed": 0},
            tickets=[
                {"phase": "done", "finished_at": today},
                {"phase": "done", "finished_at": today},
                {"phase": "done", "finished_at": yesterday},
                {"phase": "processing", "finished_at": None},
            ],
        ),
        NOW,
    )
    assert (s.state, s.active, s.done_today, s.failed) == ("working", 4, 2, 0)
    assert s.tooltip() == "convert-agent: 4 active, 2 done today"


def test_states_idle_attention_and_paused() -> None:
    assert summarize(snap(), NOW).state == "idle"
    failed = summarize(snap(counts={**COUNTS, "failed": 2}), NOW)
    assert failed.state == "attention" and "2 failed" in failed.tooltip()
    auth = summarize(
        snap(problem={"title": "key refused", "message": "the API key is refused"}), NOW
    )
    assert auth.state == "attention" and auth.problem == "the API key is refused"
    quota = summarize(snap(quota_until=NOW + 600), NOW)
    assert quota.state == "attention" and "quota used up until" in (quota.problem or "")
    assert summarize(snap(quota_until=NOW - 1), NOW).state == "idle"  # the wait is over
    paused = summarize(snap(paused=True, counts={**COUNTS, "failed": 1}), NOW)
    assert paused.state == "paused" and paused.attention  # drawn with a red dot
    assert paused.tooltip().endswith("; paused")


def test_each_state_has_its_own_icon() -> None:
    images = {s: draw_icon(s).tobytes() for s in ("idle", "working", "attention", "paused")}
    assert len(set(images.values())) == 4
    img = draw_icon("paused", badge=True)
    assert img.size == (64, 64) and img.mode == "RGBA"
    assert img.tobytes() != images["paused"]
    assert img.getpixel((0, 0))[3] == 0  # transparent corners: a disc, not a square


def test_a_display_is_needed_on_linux_only() -> None:
    assert not display_available({}, "linux")
    assert display_available({"DISPLAY": ":0"}, "linux")
    assert display_available({"WAYLAND_DISPLAY": "wayland-0"}, "linux")
    assert display_available({}, "darwin") and display_available({}, "win32")
    with pytest.raises(TrayUnavailable, match="no display"):
        load_pystray({})


def test_pystray_backend_from_the_environment_wins() -> None:
    assert choose_backend({"PYSTRAY_BACKEND": "xorg", "DISPLAY": ":0"}) == "xorg"


# --------------------------------------------------------------------------- the menu, faked


class FakeItem:
    def __init__(self, text: Any, action: Any, **kw: Any) -> None:
        self._text, self.action, self.kw = text, action, kw

    @property
    def text(self) -> str:
        return self._text(self) if callable(self._text) else str(self._text)

    def flag(self, name: str, default: bool = True) -> bool:
        v = self.kw.get(name, default)
        return bool(v(self) if callable(v) else v)


class FakeMenu:
    SEPARATOR = FakeItem("-", None)

    def __init__(self, *items: FakeItem) -> None:
        self.items = items

    def visible(self) -> list[FakeItem]:
        return [i for i in self.items if i.flag("visible")]


class FakeIcon:
    HAS_NOTIFICATION = False
    __module__ = "pystray._fake"

    def __init__(self, name: str, icon: Any, title: str, menu: FakeMenu) -> None:
        self.icon, self.title, self.menu = icon, title, menu
        self.menu_updates = 0

    def update_menu(self) -> None:
        self.menu_updates += 1


FAKE_PYSTRAY = types.SimpleNamespace(Icon=FakeIcon, Menu=FakeMenu, MenuItem=FakeItem)


class FakeAgent:
    def __init__(self, tmp: Path) -> None:
        self.cfg = Config(
            folders=(FolderConfig(tmp / "in"),), log=LogConfig(file=tmp / "agent.log")
        )
        self.calls: list[str] = []
        self.dashboard: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.listeners: list[Any] = []
        self.stopped = False

    async def pause(self) -> None:
        self.calls.append("pause")

    async def resume(self) -> None:
        self.calls.append("resume")

    async def retry(self, name: str | None = None) -> list[str]:
        self.calls.append(f"retry {name}")
        return []

    def submit(self, coro: Any) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def request_stop(self) -> None:
        self.stopped = True


def labels(menu: FakeMenu) -> list[str]:
    return [i.text for i in menu.visible()]


async def test_menu_lines_and_actions_go_through_the_facade(tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path)
    opened: list[str] = []
    tray = Tray(agent, FAKE_PYSTRAY, opener=opened.append)  # type: ignore[arg-type]
    menu: FakeMenu = tray.icon.menu
    assert labels(menu) == [
        "Active: 0",
        "Done today: 0",
        "Failed: 0",
        "-",
        "Open folder",
        "Pause intake",
        "Retry failed",
        "Open log",  # no dashboard yet: its item is hidden
        "-",
        "Quit",
    ]
    by = {i.text: i for i in menu.visible()}
    assert not by["Retry failed"].flag("enabled") and not by["Active: 0"].flag("enabled")
    assert by["Open folder"].flag("default", False)  # a click on the icon opens the folder

    tray.summary = Summary("attention", 1, 3, 2, problem="the API key is refused", attention=True)
    tray._show()
    assert labels(menu)[:4] == [
        "Active: 1",
        "Done today: 3",
        "Failed: 2",
        "⚠ the API key is refused",
    ]
    assert (
        tray.icon.title == "convert-agent: 1 active, 3 done today, 2 failed; the API key is refused"
    )
    assert tray.icon.menu_updates == 1

    agent.loop = asyncio.get_running_loop()
    by = {i.text: i for i in menu.visible()}
    by["Pause intake"].action()
    assert labels(menu)[6] == "Resume intake"  # answers at once, before the next snapshot
    by["Retry failed"].action()
    by["Open folder"].action()
    by["Open log"].action()
    # the actions reach the agent on its loop: wait for them there, then no more come
    await wait_for(lambda: len(agent.calls) >= 2, 5, "pause and retry to reach the agent")
    await quiet_for(
        0.1, lambda: None if len(agent.calls) == 2 else f"calls {agent.calls}", "one call each"
    )
    assert agent.calls == ["pause", "retry None"]
    assert opened == [str(tmp_path / "in"), str(tmp_path / "agent.log")]
    {i.text: i for i in menu.visible()}["Resume intake"].action()
    await wait_for(lambda: len(agent.calls) >= 3, 5, "resume to reach the agent")
    assert agent.calls[-1] == "resume"

    agent.dashboard = types.SimpleNamespace(open_url="http://127.0.0.1:1/?token=t")
    assert "Open dashboard" in labels(menu)
    dash = {i.text: i for i in menu.visible()}["Open dashboard"]
    assert dash.flag("default", False) and not by["Open folder"].flag("default", False)

    {i.text: i for i in menu.visible()}["Quit"].action()
    assert agent.stopped and tray.stopping


def test_no_display_runs_headless_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for k in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(k, raising=False)
    if sys.platform in ("darwin", "win32"):
        pytest.skip("a desktop is always there")
    agent: Any = FakeAgent(tmp_path)
    caplog.set_level("INFO", logger="agent.tray")
    assert start_tray(agent, None) is None
    assert [r.getMessage() for r in caplog.records] == [
        "running headless, without a tray icon: "
        "no display (DISPLAY and WAYLAND_DISPLAY are not set)"
    ]
    assert start_tray(agent, False) is None
    with pytest.raises(TrayUnavailable):
        start_tray(agent, True)


async def test_run_tray_without_a_display_is_an_error_and_auto_is_headless(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, inbox, tmp_path / "state.db")

    async def run(*args: str) -> tuple[int | None, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent",
            "--config",
            str(cfg),
            "run",
            "--once",
            *args,
            env=agent_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode()

    code, out = await run("--tray")
    assert code == 1 and "cannot show the tray icon: no display" in out
    code, out = await run()
    assert code == 0, out
    assert out.count("running headless, without a tray icon") == 1
    code, out = await run("--no-tray")
    assert code == 0 and "headless" not in out


class LateIcon(FakeIcon):
    """An icon whose loop is not up yet: setting the title fails until ``up`` (pystray's Xorg
    backend raises AttributeError for a title set before its main loop knows its thread)."""

    up = False

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "title" and "title" in self.__dict__ and not type(self).up:
            raise AttributeError("'Icon' object has no attribute '_thread'")
        super().__setattr__(name, value)


async def test_an_icon_that_cannot_be_updated_yet_is_updated_once_it_can(tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path)

    async def snapshot() -> dict[str, Any]:
        return snap(counts={**COUNTS, "processing": 2, "downloading": 0, "done": 0, "failed": 0})

    agent.snapshot = snapshot  # type: ignore[attr-defined]
    late = types.SimpleNamespace(Icon=LateIcon, Menu=FakeMenu, MenuItem=FakeItem)
    LateIcon.up = False
    tray = Tray(agent, late)  # type: ignore[arg-type]
    task = asyncio.create_task(tray.watch())
    try:
        await asyncio.sleep(0.2)  # the first refresh failed: the watch must go on, not die
        assert not task.done(), task
        assert "2 active" not in tray.icon.title
        LateIcon.up = True
        await wait_for(lambda: "2 active" in tray.icon.title, 3, "the title once the icon is up")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------- stopping, faked


class RunIcon(FakeIcon):
    """An icon whose loop runs ``setup``, then sends this process ``SEND`` (a stop signal) and
    waits for the agent's thread to close it (``stop``), as pystray's loop does."""

    SEND: signal.Signals | None = None

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.closed = threading.Event()
        self.closed_by_agent = False
        self.visible = False

    def run(self, setup: Callable[[Any], None]) -> None:
        setup(self)
        assert self.SEND is not None
        os.kill(os.getpid(), self.SEND)
        self.closed_by_agent = self.closed.wait(5)

    def stop(self) -> None:
        self.closed.set()


class RunningFakeAgent(FakeAgent):
    """Runs until ``request_stop``, like ``Agent.run``, and says why it stopped."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None

    async def run(self, *, once: bool = False) -> int:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.ready.set()
        await self._stop.wait()
        return 0

    def submit(self, coro: Any) -> Any:
        coro.close()
        raise RuntimeError("no snapshots in this test")

    def request_stop(self) -> None:
        self.stopped = True
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)


def test_every_stop_signal_of_the_platform_stops_the_agent_with_the_tray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the tray, the main thread's handlers stop the agent (its own cannot be installed
    from its thread): every signal ``platform.stop_signals`` names, so on Windows Ctrl-Break
    (SIGBREAK) as well as Ctrl-C. SIGUSR1 plays SIGBREAK here (Linux has none); without a handler
    for it, the stand-in handler below takes it and the agent does not stop."""
    from agent import platform as platform_layer
    from agent import tray as tray_mod

    stand_in = signal.SIGUSR1
    seen: list[int] = []
    closed: list[bool] = []
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, stand_in)}
    signal.signal(stand_in, lambda signum, _frame: seen.append(signum))
    monkeypatch.setattr(platform_layer, "stop_signals", lambda: (signal.SIGINT, stand_in))
    monkeypatch.setattr(platform_layer, "block_stop_signals", lambda: None)
    monkeypatch.setattr(tray_mod, "CLOSE_TIMEOUT", 0.01)
    monkeypatch.setattr(tray_mod, "_exit_stuck", lambda _result: closed.append(True))
    RunIcon.SEND = stand_in
    agent = RunningFakeAgent(tmp_path)
    try:
        tray = Tray(agent, types.SimpleNamespace(Icon=RunIcon, Menu=FakeMenu, MenuItem=FakeItem))  # type: ignore[arg-type]
        assert tray_mod.run_with_tray(agent, tray) == 0  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        while not closed and time.monotonic() < deadline:  # the close guard has fired
            time.sleep(0.01)
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
    assert seen == [], "the stop signal reached the stand-in handler, not the tray's"
    assert tray.icon.closed_by_agent, "the agent did not stop on the signal"
    assert agent.stopped and tray.stopping
