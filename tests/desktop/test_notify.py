"""Desktop notifications: batching (pure), the platform commands, and delivery through a fake
``notify-send`` on PATH, from a unit call and from a real agent run."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from desktop_helpers import agent_env, png_bytes, write_config

from agent.emulator import RunningEmulator
from agent.notify import Batcher, Ended, Message, Notifications, compose, desktop_command

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]

RECORDER = """#!/bin/sh
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "{log}"
"""


def fake_notify_send(folder: Path) -> Path:
    """A ``notify-send`` that appends its arguments (one JSON list a line) to ``calls.jsonl``."""
    folder.mkdir(exist_ok=True)
    log = folder / "calls.jsonl"
    script = folder / "notify-send"
    script.write_text(RECORDER.format(log=log))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


def calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


# --------------------------------------------------------------------------- batching (pure)


def test_endings_close_together_are_one_batch() -> None:
    b = Batcher(window=2.0)
    for i in range(12):
        b.add(Ended(f"t{i}.job", True), now=100.0 + i * 0.1)
    assert b.due_at() == 101.1 + 2.0
    assert b.take(102.0) == []  # still collecting
    batch = b.take(103.2)
    assert len(batch) == 12
    assert b.due_at() is None and b.take(1e9) == []


def test_a_steady_trickle_still_goes_out_after_max_wait() -> None:
    b = Batcher(window=2.0, max_wait=10.0)
    for i in range(30):
        b.add(Ended(f"t{i}.job", True), now=i * 1.0)  # never quiet for 2 s
    assert b.due_at() == 10.0
    assert len(b.take(10.0)) == 30


def test_compose_says_counts_and_the_plain_error() -> None:
    many = [Ended(f"t{i}.job", True) for i in range(12)]
    assert compose(many) == [
        Message("12 tickets done", "t0.job, t1.job, t2.job, t3.job, t4.job and 7 more")
    ]
    one_failed = [Ended("report.job", False, "the server rejected target 'xyz'")]
    assert compose(one_failed) == [
        Message("report.job failed", "the server rejected target 'xyz'", critical=True)
    ]
    mixed = compose([Ended("a.job", True), Ended("b.job", False, "x"), Ended("c.job", False, "y")])
    assert [m.title for m in mixed] == ["a.job done", "2 tickets failed"]
    assert mixed[1].body == "b.job, c.job" and mixed[1].critical
    assert compose([]) == []


# --------------------------------------------------------------------------- platform commands


def test_linux_uses_notify_send_with_urgency_and_escaped_body() -> None:
    msg = Message("a.job failed", "<b>no</b> & more", critical=True)
    cmd = desktop_command(
        msg, platform="linux", env={"DISPLAY": ":0"}, which=lambda n: f"/usr/bin/{n}"
    )
    assert cmd == [
        "/usr/bin/notify-send",
        "--app-name=convert-agent",
        "--urgency=critical",
        "a.job failed",
        "&lt;b&gt;no&lt;/b&gt; &amp; more",
    ]


def test_linux_falls_back_to_gdbus_then_to_nothing() -> None:
    msg = Message("3 tickets done", "a, b, c")
    gdbus = desktop_command(
        msg,
        platform="linux",
        env={"WAYLAND_DISPLAY": "wayland-0"},
        which=lambda n: "/usr/bin/gdbus" if n == "gdbus" else None,
    )
    assert gdbus is not None and gdbus[:2] == ["/usr/bin/gdbus", "call"]
    assert "--method=org.freedesktop.Notifications.Notify" in gdbus
    assert desktop_command(msg, platform="linux", env={}, which=lambda n: "/bin/x") is None
    assert (
        desktop_command(msg, platform="linux", env={"DISPLAY": ":0"}, which=lambda n: None) is None
    )


def test_macos_passes_the_texts_as_arguments_not_as_script() -> None:
    msg = Message('say "hi"', 'end run\ndo shell script "rm -rf /"')
    cmd = desktop_command(msg, platform="darwin", env={}, which=lambda n: "/usr/bin/osascript")
    assert cmd is not None and cmd[-2:] == [msg.title, msg.body]
    assert all(msg.body not in part for part in cmd[:-2])
    assert desktop_command(msg, platform="win32", env={}, which=lambda n: "x") is None


# --------------------------------------------------------------------------- delivery


class _FakeAgent:
    def __init__(self) -> None:
        self.listeners: list[Callable[[Any], None]] = []


def test_delivery_runs_notify_send_from_path(tmp_path: Path, monkeypatch: Any) -> None:
    log = fake_notify_send(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DISPLAY", ":99")
    n = Notifications(_FakeAgent())  # type: ignore[arg-type]
    n.deliver(Message("2 tickets done", "a.job, b.job"))
    n.deliver(Message("c.job failed", "the input is gone", critical=True))
    assert calls(log) == [
        ["--app-name=convert-agent", "--urgency=normal", "2 tickets done", "a.job, b.job"],
        ["--app-name=convert-agent", "--urgency=critical", "c.job failed", "the input is gone"],
    ]


def test_a_broken_service_is_reported_once_then_logged(
    tmp_path: Path, monkeypatch: Any, caplog: Any
) -> None:
    monkeypatch.setenv("DISPLAY", ":99")
    runs: list[list[str]] = []

    def failing(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        runs.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, b"", b"no notification daemon")

    monkeypatch.setattr("agent.notify.shutil.which", lambda n: f"/usr/bin/{n}")
    n = Notifications(_FakeAgent(), run=failing)  # type: ignore[arg-type]
    caplog.set_level("INFO", logger="agent.notify")
    n.deliver(Message("a.job done", ""))
    n.deliver(Message("b.job done", ""))
    assert len(runs) == 1
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no notification daemon" in warnings[0].getMessage()
    lines = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert lines == ["notification: a.job done", "notification: b.job done"]


async def test_a_real_run_sends_one_batched_notification_and_one_failure(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "photo.png").write_bytes(png_bytes())
    for i in range(3):
        (inbox / f"ok{i}.job").write_text(
            f"input: photo.png\ntarget: jpg\noutput: {{name: 'out{i}.jpg'}}\n"
        )
    (inbox / "bad.job").write_text("input: photo.png\ntarget: jpg\ncolour: blue\n")
    cfg = write_config(
        tmp_path / "c.yaml",
        emu.base_url,
        inbox,
        tmp_path / "state.db",
        notifications={"batch_seconds": 5.0},
    )
    log = fake_notify_send(tmp_path / "bin")
    env = agent_env(
        PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        DBUS_SESSION_BUS_ADDRESS="unix:path=/nonexistent",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "--config",
        str(cfg),
        "run",
        "--once",
        "--no-tray",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, out.decode()  # bad.job failed
    got = calls(log)
    assert len(got) == 2, (got, out.decode()[-3000:])
    by_title = {c[2]: c for c in got}
    done = by_title["3 tickets done"]
    assert done[1] == "--urgency=normal"
    assert sorted(done[3].split(", ")) == ["ok0.job", "ok1.job", "ok2.job"]
    failed = by_title["bad.job failed"]
    assert failed[1] == "--urgency=critical" and "colour" in failed[3]


async def test_notifications_can_be_switched_off(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "photo.png").write_bytes(png_bytes())
    (inbox / "ok.job").write_text("input: photo.png\ntarget: jpg\n")
    cfg = write_config(
        tmp_path / "c.yaml",
        emu.base_url,
        inbox,
        tmp_path / "state.db",
        notifications={"enabled": False},
    )
    log = fake_notify_send(tmp_path / "bin")
    env = agent_env(PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", DISPLAY=":9")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "--config",
        str(cfg),
        "run",
        "--once",
        "--no-tray",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    assert (inbox / "ok.job.done").exists()
    assert calls(log) == []
