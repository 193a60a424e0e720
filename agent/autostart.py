"""Login entries that start the agent: write them, remove them, idempotently.

Linux (and the BSDs): an XDG autostart entry (``$XDG_CONFIG_HOME/autostart/convert-agent.desktop``)
starts ``convert-agent run`` with the desktop session, tray included; a systemd user unit
(``$XDG_CONFIG_HOME/systemd/user/convert-agent.service``) is written beside it for machines without
a desktop, to be enabled by hand (``systemctl --user enable --now convert-agent``) — both at once
would start two agents, and the second would stop at the state lock. macOS: a LaunchAgent plist.
Windows: a ``.cmd`` in the Startup folder.

Writers are pure (``*_entries`` return paths and contents for the target folders they are given);
``install``/``remove`` do the file work: atomic writes, nothing rewritten when unchanged, and
``remove`` also removes folders it left empty below the base (home or ``XDG_CONFIG_HOME``), so
install then remove leaves the tree as it was. Must not start, stop or enable anything.
"""

from __future__ import annotations

import os
import plistlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import platform as platform_layer

APP = "convert-agent"
LAUNCHD_LABEL = "com.convert-agent.agent"
DESKTOP_NAME = f"{APP}.desktop"
UNIT_NAME = f"{APP}.service"


@dataclass(frozen=True)
class Entry:
    path: Path
    content: bytes
    base: Path  # never removed; empty folders between it and ``path`` are removed with it


@dataclass(frozen=True)
class Change:
    path: Path
    action: str  # wrote | unchanged | removed | absent

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "action": self.action}


def agent_command(config: Path | None = None, *, executable: str | None = None) -> list[str]:
    """How a login entry starts this installation (``executable``: this Python by default).

    Windows: ``pythonw.exe -m agent`` beside it when there is one: the console script
    (``convert-agent.exe``) is a console program, and a tray app started at login should not
    open a console window (the agent runs without stdout/stderr then: logs go to its log file).
    Elsewhere, and on Windows without ``pythonw.exe``: the console script beside this Python
    when there is one (a venv or pipx install), else ``python -m agent``. With ``--config`` when
    a config file was named explicitly."""
    exe = Path(executable or sys.executable)
    script = exe.with_name(f"{APP}.exe" if platform_layer.IS_WINDOWS else APP)
    windowless = exe.with_name("pythonw.exe")
    if platform_layer.IS_WINDOWS and windowless.is_file():
        cmd = [str(windowless), "-m", "agent"]
    elif script.is_file():
        cmd = [str(script)]
    else:
        cmd = [str(exe), "-m", "agent"]
    if config is not None:
        cmd += ["--config", str(config.expanduser().resolve())]
    return cmd


# --------------------------------------------------------------------------- writers (pure)

_DESKTOP_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def _desktop_arg(arg: str) -> str:
    """Quote one Exec argument (Desktop Entry spec: quoting, then the string escapes)."""
    if arg and not _DESKTOP_RESERVED.intersection(arg):
        quoted = arg
    else:
        quoted = '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'
    return quoted.replace("\\", "\\\\").replace("%", "%%")


def _systemd_arg(arg: str) -> str:
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    quoted = f'"{escaped}"' if (not arg or any(c.isspace() or c in "\"'\\;" for c in arg)) else arg
    return quoted.replace("%", "%%").replace("$", "$$")


def linux_entries(
    config_home: Path, command: Sequence[str], base: Path | None = None
) -> list[Entry]:
    """The XDG autostart entry and the systemd user unit under ``config_home``."""
    run = [*command, "run"]
    desktop = "\n".join(
        [
            "[Desktop Entry]",
            "Type=Application",
            f"Name={APP}",
            "Comment=Turns folders into conversion inboxes (api2convert)",
            f"Exec={' '.join(_desktop_arg(a) for a in run)}",
            "Terminal=false",
            "X-GNOME-Autostart-enabled=true",
            "",
        ]
    )
    unit = "\n".join(
        [
            "[Unit]",
            f"Description={APP}: folders as conversion inboxes (api2convert)",
            "",
            "[Service]",
            f"ExecStart={' '.join(_systemd_arg(a) for a in [*run, '--no-tray'])}",
            "Restart=on-failure",
            "RestartSec=10",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )
    keep = base or config_home
    return [
        Entry(config_home / "autostart" / DESKTOP_NAME, desktop.encode(), keep),
        Entry(config_home / "systemd" / "user" / UNIT_NAME, unit.encode(), keep),
    ]


def macos_entries(
    launch_agents: Path, command: Sequence[str], base: Path | None = None
) -> list[Entry]:
    """The LaunchAgent plist in ``launch_agents`` (normally ~/Library/LaunchAgents)."""
    plist = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [*command, "run"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ProcessType": "Interactive",
        # Only in a logged-in desktop session (where the menu-bar icon can be shown), not for
        # SSH or background sessions.
        "LimitLoadToSessionType": "Aqua",
    }
    return [
        Entry(
            launch_agents / f"{LAUNCHD_LABEL}.plist",
            plistlib.dumps(plist, sort_keys=True),
            base or launch_agents,
        )
    ]


def _cmd_arg(arg: str) -> str:
    return '"' + arg.replace('"', "").replace("%", "%%") + '"'


def windows_entries(startup: Path, command: Sequence[str], base: Path | None = None) -> list[Entry]:
    """A ``.cmd`` in the Startup folder that starts the agent without waiting for it."""
    line = f'start "{APP}" /min ' + " ".join(_cmd_arg(a) for a in [*command, "run"])
    text = "\r\n".join(["@echo off", f"rem Written by `{APP} autostart install`", line, ""])
    return [Entry(startup / f"{APP}.cmd", text.encode(), base or startup)]


def platform_entries(
    command: Sequence[str],
    *,
    platform: str = platform_layer.NAME,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> list[Entry]:
    """The entries for this platform, in the folders its login mechanism reads."""
    env = os.environ if env is None else env
    home = home or Path(env.get("HOME") or Path.home())
    if platform == "darwin":
        return macos_entries(home / "Library" / "LaunchAgents", command, home)
    if platform == "win32":
        appdata = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        startup = appdata / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"
        return windows_entries(startup, command, appdata)
    xdg = env.get("XDG_CONFIG_HOME")
    if xdg and Path(xdg).is_absolute():  # the spec says to ignore a relative value
        return linux_entries(Path(xdg), command, Path(xdg))
    return linux_entries(home / ".config", command, home)


# --------------------------------------------------------------------------- file work


def start_hint(entries: Sequence[Entry]) -> str:
    """What to run to start the agent now rather than at the next login (printed by
    ``autostart install``)."""
    names = {e.path.name for e in entries}
    if UNIT_NAME in names:
        return (
            "the agent starts at your next desktop login; without a desktop, use the systemd "
            "unit instead: systemctl --user enable --now convert-agent"
        )
    for e in entries:
        if e.path.suffix == ".plist":
            return (
                "the agent starts at your next login; to start it now: "
                f"launchctl bootstrap gui/$(id -u) '{e.path}'"
            )
        if e.path.suffix == ".cmd":
            return f'the agent starts at your next login; to start it now: start "" "{e.path}"'
    return ""


def install(entries: Sequence[Entry]) -> list[Change]:
    changes = []
    for e in entries:
        try:
            if e.path.read_bytes() == e.content:
                changes.append(Change(e.path, "unchanged"))
                continue
        except FileNotFoundError:
            pass
        e.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = e.path.with_name(f".{e.path.name}.tmp")
        try:
            tmp.write_bytes(e.content)
            os.replace(tmp, e.path)
        finally:
            tmp.unlink(missing_ok=True)
        changes.append(Change(e.path, "wrote"))
    return changes


def remove(entries: Sequence[Entry]) -> list[Change]:
    changes = []
    for e in entries:
        extra = []
        if e.path.name == UNIT_NAME:
            # Enabled by hand with systemctl: that link would point at nothing once we are gone.
            wants = e.path.parent / "default.target.wants" / UNIT_NAME
            if wants.is_symlink():
                extra.append(wants)
        for path in [*extra, e.path]:
            try:
                path.unlink()
            except FileNotFoundError:
                if path == e.path:
                    changes.append(Change(path, "absent"))
                continue
            changes.append(Change(path, "removed"))
            _prune(path.parent, e.base)
    return changes


def _prune(folder: Path, base: Path) -> None:
    """Remove ``folder`` and its parents while they are empty, stopping at ``base``."""
    while folder != base and folder.is_relative_to(base):
        try:
            folder.rmdir()
        except OSError:  # not empty (or not ours to remove)
            return
        folder = folder.parent
