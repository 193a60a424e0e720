"""The rotating log file: one line per state change, private, and never the API key."""

from __future__ import annotations

import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import KEY, png_bytes, run_agent, write_config

from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


async def test_log_file_records_each_transition_without_secrets(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "a.job").write_text(
        "input: a.png\ntarget: jpg\ndownload: {password: hunter2-secret}\n"
    )
    logfile = tmp_path / "logs" / "agent.log"
    cfg = write_config(
        tmp_path / "c.yaml",
        emu.base_url,
        [inbox],
        tmp_path / "state.db",
        log={"file": str(logfile)},
    )
    code, out = await run_agent(cfg, "-v", "run", "--once")
    assert code == 0, out
    text = logfile.read_text()
    assert stat.S_IMODE(logfile.stat().st_mode) == 0o600
    job_id = emu.state.snapshot()["jobs"][0]["id"]
    for phase in ("creating", "uploading", "starting", "processing", "downloading", "done"):
        assert "a.job [job " in text and f": {phase}" in text, phase
    assert job_id in text
    for secret in (KEY, "hunter2-secret"):
        assert secret not in text and secret not in out
