"""`convert-agent autostart install|remove`: the login entries for each platform, written and
removed idempotently; install then remove leaves a home folder exactly as it was."""

from __future__ import annotations

import configparser
import json
import os
import plistlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.autostart import (
    agent_command,
    install,
    linux_entries,
    macos_entries,
    platform_entries,
    remove,
    start_hint,
    windows_entries,
)
from agent.cli import cli


def tree(root: Path) -> dict[str, tuple[str, int | bytes]]:
    """Every path under ``root`` with its kind and mode or contents."""
    out: dict[str, tuple[str, int | bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath) / d
            out[str(p.relative_to(root))] = ("dir", p.stat().st_mode)
        for f in filenames:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = ("file", p.read_bytes())
    return out


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lived-in temporary home: some config of other programs, no autostart folder yet."""
    home = tmp_path / "home"
    (home / ".config" / "other-app").mkdir(parents=True)
    (home / ".config" / "other-app" / "settings.ini").write_text("[x]\ny = 1\n")
    (home / ".local" / "share").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_install_then_remove_leaves_the_home_as_it_was(home: Path) -> None:
    before = tree(home)
    code, out = invoke("autostart", "install")
    assert code == 0, out
    desktop = home / ".config" / "autostart" / "convert-agent.desktop"
    unit = home / ".config" / "systemd" / "user" / "convert-agent.service"
    assert f"wrote     {desktop}" in out and f"wrote     {unit}" in out
    assert "systemctl --user enable --now convert-agent" in out
    installed = tree(home)
    assert set(installed) - set(before) == {
        ".config/autostart",
        ".config/autostart/convert-agent.desktop",
        ".config/systemd",
        ".config/systemd/user",
        ".config/systemd/user/convert-agent.service",
    }

    code, out = invoke("autostart", "install")  # again: nothing changes
    assert code == 0 and out.count("unchanged") == 2
    assert tree(home) == installed

    code, out = invoke("autostart", "remove")
    assert code == 0 and f"removed   {desktop}" in out and f"removed   {unit}" in out
    assert tree(home) == before

    code, out = invoke("autostart", "remove")  # again: nothing there
    assert code == 0 and out.count("absent") == 2
    assert tree(home) == before


def test_remove_keeps_folders_that_hold_other_things(home: Path) -> None:
    (home / ".config" / "autostart").mkdir()
    (home / ".config" / "autostart" / "other.desktop").write_text("[Desktop Entry]\n")
    before = tree(home)
    assert invoke("autostart", "install")[0] == 0
    assert invoke("autostart", "remove")[0] == 0
    assert tree(home) == before


def test_remove_also_removes_the_link_systemctl_enable_made(home: Path) -> None:
    before = tree(home)
    assert invoke("autostart", "install")[0] == 0
    user = home / ".config" / "systemd" / "user"
    wants = user / "default.target.wants"
    wants.mkdir()
    (wants / "convert-agent.service").symlink_to(user / "convert-agent.service")
    code, out = invoke("autostart", "remove", "--json")
    assert code == 0
    actions = {Path(c["path"]).name + ":" + c["action"] for c in json.loads(out)["changes"]}
    assert actions == {"convert-agent.service:removed", "convert-agent.desktop:removed"}
    assert not wants.exists() and tree(home) == before


def test_json_output_lists_each_file(home: Path) -> None:
    code, out = invoke("autostart", "install", "--json")
    assert code == 0
    changes = json.loads(out)["changes"]
    assert [c["action"] for c in changes] == ["wrote", "wrote"]
    assert all(Path(c["path"]).is_file() for c in changes)


def test_xdg_config_home_is_honoured(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    before_home, before_xdg = tree(home), tree(xdg)
    assert invoke("autostart", "install")[0] == 0
    assert (xdg / "autostart" / "convert-agent.desktop").is_file()
    assert (xdg / "systemd" / "user" / "convert-agent.service").is_file()
    assert tree(home) == before_home
    assert invoke("autostart", "remove")[0] == 0
    assert tree(xdg) == before_xdg and xdg.is_dir()


def test_the_entries_start_this_installation_with_the_given_config(
    home: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "my configs" / "agent.yaml"
    code, _ = invoke("--config", str(cfg), "autostart", "install")
    assert code == 0
    entry = configparser.ConfigParser(interpolation=None)
    entry.read(home / ".config" / "autostart" / "convert-agent.desktop")
    d = entry["Desktop Entry"]
    assert d["Type"] == "Application" and d["Terminal"] == "false"
    cmd = agent_command(cfg)
    assert Path(cmd[0]).is_absolute()
    # The path with a space is quoted (Desktop Entry spec), the rest stays as it is.
    assert d["Exec"].endswith(f'--config "{cfg.resolve()}" run')
    unit = (home / ".config/systemd/user/convert-agent.service").read_text()
    assert f'--config "{cfg.resolve()}" run --no-tray' in unit
    assert "WantedBy=default.target" in unit


def test_desktop_exec_quotes_what_the_spec_reserves() -> None:
    (desktop, unit) = linux_entries(Path("/c"), ["/opt/my apps/ca", '--x="$1"', "50%"])
    exec_line = next(
        line for line in desktop.content.decode().splitlines() if line.startswith("Exec=")
    )
    # quoting: "…" with \" \$ escaped, then the string escape doubles each backslash; % → %%
    assert exec_line == 'Exec="/opt/my apps/ca" "--x=\\\\"\\\\$1\\\\"" 50%% run'
    start = next(line for line in unit.content.decode().splitlines() if "ExecStart=" in line)
    assert start == 'ExecStart="/opt/my apps/ca" "--x=\\"$$1\\"" 50%% run --no-tray'


def test_macos_writer_makes_a_launch_agent(tmp_path: Path) -> None:
    agents = tmp_path / "Library" / "LaunchAgents"
    entries = macos_entries(agents, ["/usr/local/bin/convert-agent"], tmp_path)
    assert [e.path for e in entries] == [agents / "com.convert-agent.agent.plist"]
    plist = plistlib.loads(entries[0].content)
    assert plist["Label"] == "com.convert-agent.agent"
    assert plist["ProgramArguments"] == ["/usr/local/bin/convert-agent", "run"]
    assert plist["RunAtLoad"] is True
    before = tree(tmp_path)
    assert [c.action for c in install(entries)] == ["wrote"]
    assert [c.action for c in install(entries)] == ["unchanged"]
    assert [c.action for c in remove(entries)] == ["removed"]
    assert tree(tmp_path) == before


def test_windows_writer_makes_a_startup_cmd(tmp_path: Path) -> None:
    startup = tmp_path / "Startup"
    cmd = [r"C:\Program Files\Python311\pythonw.exe", "-m", "agent"]
    (entry,) = windows_entries(startup, cmd, tmp_path)
    assert entry.path == startup / "convert-agent.cmd"
    text = entry.content.decode()
    assert "\r\n" in text and text.startswith("@echo off")
    assert r'start "convert-agent" /min "C:\Program Files\Python311\pythonw.exe" "-m"' in text
    assert text.rstrip().endswith('"agent" "run"')
    before = tree(tmp_path)
    install([entry])
    assert entry.path.read_bytes() == entry.content
    remove([entry])
    assert tree(tmp_path) == before


def test_platform_entries_pick_the_platforms_folder(tmp_path: Path) -> None:
    cmd = ["/x/convert-agent"]
    mac = platform_entries(cmd, platform="darwin", env={}, home=tmp_path)
    assert mac[0].path == tmp_path / "Library/LaunchAgents/com.convert-agent.agent.plist"
    win = platform_entries(cmd, platform="win32", env={"APPDATA": str(tmp_path / "r")})
    assert win[0].path == (
        tmp_path / "r/Microsoft/Windows/Start Menu/Programs/Startup/convert-agent.cmd"
    )
    linux = platform_entries(cmd, platform="linux", env={"XDG_CONFIG_HOME": "rel"}, home=tmp_path)
    # a relative XDG_CONFIG_HOME is ignored, as the spec says
    assert linux[0].path == tmp_path / ".config/autostart/convert-agent.desktop"


def test_on_windows_the_login_entry_starts_pythonw_without_a_console_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent import platform as platform_layer

    scripts = tmp_path / "pipx" / "venvs" / "convert-agent" / "Scripts"
    scripts.mkdir(parents=True)
    for name in ("python.exe", "pythonw.exe", "convert-agent.exe"):
        (scripts / name).write_bytes(b"MZ")
    monkeypatch.setattr(platform_layer, "IS_WINDOWS", True)
    python = str(scripts / "python.exe")
    assert agent_command(executable=python) == [str(scripts / "pythonw.exe"), "-m", "agent"]
    (scripts / "pythonw.exe").unlink()  # an unusual install: the console script, then
    assert agent_command(executable=python) == [str(scripts / "convert-agent.exe")]
    monkeypatch.setattr(platform_layer, "IS_WINDOWS", False)
    (scripts / "convert-agent").write_bytes(b"#!")
    assert agent_command(executable=str(scripts / "python")) == [str(scripts / "convert-agent")]


@pytest.mark.parametrize("plat", ["linux", "darwin", "win32"])
def test_each_platforms_entry_parses_and_starts_the_agent_with_its_config(
    tmp_path: Path, plat: str
) -> None:
    cfg = tmp_path / "a config" / "agent.yaml"
    cmd = [str(tmp_path / "bin" / "convert-agent"), "--config", str(cfg)]
    env = {"APPDATA": str(tmp_path / "AppData" / "Roaming")}
    (tmp_path / "AppData" / "Roaming").mkdir(parents=True)  # there on every Windows
    entries = platform_entries(cmd, platform=plat, env=env, home=tmp_path)
    main = entries[0]
    if plat == "linux":
        entry = configparser.ConfigParser(interpolation=None)
        entry.read_string(main.content.decode())
        d = entry["Desktop Entry"]
        assert d["Type"] == "Application" and d["Terminal"] == "false"
        assert d["Exec"].endswith(f'--config "{cfg}" run')
        assert main.path == tmp_path / ".config/autostart/convert-agent.desktop"
    elif plat == "darwin":
        plist = plistlib.loads(main.content)
        assert plist["ProgramArguments"] == [*cmd, "run"]
        assert plist["RunAtLoad"] is True and plist["LimitLoadToSessionType"] == "Aqua"
        assert plist["KeepAlive"] == {"SuccessfulExit": False}  # restarted after a crash only
        assert main.path == tmp_path / "Library/LaunchAgents/com.convert-agent.agent.plist"
    else:
        text = main.content.decode()
        lines = text.split("\r\n")
        assert lines[0] == "@echo off" and lines[-1] == ""
        assert lines[2] == (f'start "convert-agent" /min "{cmd[0]}" "--config" "{cfg}" "run"')
        assert main.path.parent.name == "Startup"
    assert start_hint(entries)
    before = tree(tmp_path)
    assert {c.action for c in install(entries)} == {"wrote"}
    assert {c.action for c in install(entries)} == {"unchanged"}
    remove(entries)
    assert tree(tmp_path) == before
