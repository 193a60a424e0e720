"""A refused API key pauses the work and says so; it never fails a ticket."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml
from e2e_harness import png_bytes, spawn_agent, stop_agent, wait_for, write_config

from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


async def test_refused_key_makes_tickets_wait_with_a_plain_message(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(api_key="the-right-key-0000000000000000000")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "a.job").write_text("input: a.png\ntarget: jpg\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, "run", log=log)
    sidecar = inbox / "a.status.yaml"

    def waiting() -> bool:
        try:
            return yaml.safe_load(sidecar.read_text()).get("phase") == "waiting"
        except (OSError, AttributeError):
            return False

    try:
        await wait_for(waiting, 20, "the ticket to wait")
        data = yaml.safe_load(sidecar.read_text())
        assert "key" in data["error"].lower()
        assert data["next_attempt_at"]
        assert proc.poll() is None  # the agent stays up
        assert (inbox / "a.job").exists() and not (inbox / "a.job.failed").exists()
    finally:
        code = await stop_agent(proc)
    assert code == 0
    text = log.read_text()
    assert "e2e0" not in text  # the configured (wrong) key is never logged
    assert text.count("every ticket waits") == 1  # said once, not on every retry
