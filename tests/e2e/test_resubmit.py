"""`tickets.resubmit_expired`: an output the server no longer serves is converted again, once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml
from e2e_harness import invariants, outputs_match, png_bytes, run_agent, write_config

from agent.emulator import FaultSpec, RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


async def _run(tmp_path: Path, emu: RunningEmulator, resubmit: bool) -> tuple[int, str, Path]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "a.job").write_text("input: a.png\ntarget: jpg\n")
    cfg = write_config(
        tmp_path / "c.yaml",
        emu.base_url,
        [inbox],
        tmp_path / "state.db",
        tickets={"resubmit_expired": resubmit},
    )
    code, out = await run_agent(cfg, "run", "--once")
    return code, out, inbox


async def test_expired_output_is_converted_again_when_configured(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(faults=(FaultSpec("download", "expire", count=1),))
    code, out, inbox = await _run(tmp_path, emu, resubmit=True)
    assert code == 0, out
    state = emu.state.snapshot()
    assert len(state["jobs"]) == 2 and all(
        j["starts"] == j["start_requests"] == 1 for j in state["jobs"]
    )
    outputs_match(inbox, state, ["a.jpg"])
    assert invariants(inbox, state) == []
    assert (inbox / "a.job.done").exists()


async def test_expired_output_fails_the_ticket_by_default(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(faults=(FaultSpec("download", "expire", count=1),))
    code, out, inbox = await _run(tmp_path, emu, resubmit=False)
    assert code == 1, out
    assert len(emu.state.snapshot()["jobs"]) == 1
    sidecar = yaml.safe_load((inbox / "a.status.yaml").read_text())
    assert sidecar["phase"] == "failed" and "expired" in sidecar["error"]
    assert not (inbox / "a.jpg").exists()
