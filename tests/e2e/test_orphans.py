"""No staged job is left behind for a ticket that has finished (the e2e invariants check it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import invariants, png_bytes, run_agent, sidecar, write_config

from agent.emulator import FaultSpec, RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


async def test_a_ticket_failed_while_uploading_cancels_its_staged_job(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(faults=(FaultSpec("upload", "error", param=400),))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "a.job").write_text("input: a.png\ntarget: jpg\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "s.db")

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 1, out
    assert sidecar(inbox, "a")["phase"] == "failed"
    state = emu.state.snapshot()
    assert len(state["jobs"]) == 1  # created, then the upload was refused
    assert state["jobs"][0]["status"] == "canceled", state["jobs"][0]["status"]
    assert invariants(inbox, state) == []  # the job must not be left staged
