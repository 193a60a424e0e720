"""A ticket dropped into a folder becomes a verified output beside it (real process, real HTTP)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml
from e2e_harness import invariants, outputs_match, png_bytes, run_agent, write_config

from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


async def test_run_once_converts_a_ticket_and_files_it(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "photo.png").write_bytes(png_bytes())
    (inbox / "photo.job").write_text("input: photo.png\ntarget: jpg\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")

    code, out = await run_agent(cfg, "run", "--once")

    assert code == 0, out
    names = {p.name for p in inbox.iterdir()}
    assert names == {"photo.jpg", "photo.job.done", "photo.png", "photo.status.yaml"}
    outputs_match(inbox, emu.state.snapshot(), ["photo.jpg"])
    sidecar = yaml.safe_load((inbox / "photo.status.yaml").read_text())
    assert sidecar["phase"] == "done" and sidecar["outputs"][0]["verdict"] == "verified"
    assert invariants(inbox, emu.state.snapshot()) == []


async def test_run_once_exits_1_when_a_ticket_fails(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "bad.job").write_text("input: photo.png\ntarget: jpg\ncolour: blue\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")

    code, out = await run_agent(cfg, "run", "--once")

    assert code == 1, out
    assert (inbox / "bad.job.failed").exists()
    sidecar = yaml.safe_load((inbox / "bad.status.yaml").read_text())
    assert sidecar["phase"] == "failed" and "colour" in sidecar["error"]
    assert emu.state.create_requests == 0
