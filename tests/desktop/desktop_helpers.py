"""Helpers for the desktop tests: a test config and the agent as a child process."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

KEY = "d35k" * 8


def png_bytes(color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(out, "PNG")
    return out.getvalue()


def write_config(
    path: Path, base_url: str, inbox: Path, state: Path, **sections: Mapping[str, Any]
) -> Path:
    """Short settle and poll times; the log file in the test's folder."""
    cfg: dict[str, Any] = {
        "api": {"base_url": base_url, "key": KEY, "requests_per_second": 1000},
        "folders": [str(inbox)],
        "state": {"path": str(state)},
        "tickets": {"settle_seconds": 0.1, "parse_grace_seconds": 0.5},
        "polling": {"min_interval": 0.1, "max_interval": 0.5, "reconcile_interval": 2},
        "log": {"file": str(path.parent / "agent.log"), "level": "info"},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("API2CONVERT_")}
    for k in ("DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "PYSTRAY_BACKEND"):
        env.pop(k, None)
    env.update(extra)
    return env


def spawn(config: Path, *args: str, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(config), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def quiet_for(seconds: float, problem: Callable[[], str | None], what: str) -> None:
    """A bounded quiet check: poll ``problem()`` for ``seconds``, failing at once when it names
    one (after the event that shows the agent has acted was waited for)."""
    started = time.monotonic()
    while True:
        found = problem()
        if found:
            raise AssertionError(f"{what}: after {time.monotonic() - started:.2f}s, {found}")
        if time.monotonic() - started >= seconds:
            return
        await asyncio.sleep(0.05)


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit code, or None when the process is still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return proc.poll()
