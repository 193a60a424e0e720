"""The agent as the Windows login entry starts it: ``pythonw.exe -m agent run`` (no console
window, so no ``sys.stdout`` or ``sys.stderr`` at all: both are None under pythonw). Played here
by setting both to None before the agent's own entry point runs; what cannot be shown on Linux is
the Windows tray itself."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import agent_env, invariants, png_bytes, write_config

from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]

PYTHONW = (
    "import sys; sys.stdout = sys.stderr = None; "
    "sys.argv = ['convert-agent', '--config', sys.argv[1], 'run', '--once']; "
    "from agent.__main__ import main; main()"
)


async def test_the_agent_works_without_stdout_and_stderr_as_pythonw_runs_it(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "a.job").write_text("input: a.png\ntarget: jpg\n")
    log = tmp_path / "agent.log"
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "s.db")
    text = cfg.read_text().replace("file: false", f"file: {log}")
    cfg.write_text(text)

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PYTHONW,
        str(cfg),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=agent_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)

    assert proc.returncode == 0, (out, err, log.read_text() if log.exists() else "no log")
    assert (out, err) == (b"", b"")  # nothing even tried to write there
    assert (inbox / "a.job.done").exists()
    assert "a.job: accepted" in log.read_text()  # the log file is where its lines went
    assert invariants(inbox, emu.state.snapshot()) == []
