"""Graceful stop: SIGTERM in the middle of downloads returns within 5 s with nothing torn, and the
next start resumes where it stopped (the partial download continues with Range, nothing is
created, uploaded or started again)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import (
    invariants,
    md5,
    png_bytes,
    run_agent,
    spawn_agent,
    wait_for,
    write_config,
)

from agent.emulator import FaultSpec, RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]
TICKETS = 6


async def test_sigterm_mid_download_stops_within_5s_and_the_next_start_resumes(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(
        processing_seconds=0.4, faults=(FaultSpec("download", "slow", param=6.0),)
    )
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(TICKETS):
        (inbox / f"p{i}.png").write_bytes(png_bytes((300 + i, 200), "blue"))
        (inbox / f"p{i}.job").write_text(f"input: p{i}.png\ntarget: bmp\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "s.db")
    log = tmp_path / "agent.log"

    proc = spawn_agent(cfg, log=log)
    try:
        await wait_for(
            lambda: any(inbox.glob(".*.part")),
            30,
            "a download under way",
        )
        await asyncio.sleep(1.0)  # some bytes in (kept in memory until the part is flushed)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: proc.poll() is not None, 5.0, "the agent to stop after SIGTERM")
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert took < 5.0

    # Nothing torn: every output in the folder is verified; only resumable parts are hidden.
    state = emu.state.snapshot()
    sums = {o["checksum"] for j in state["jobs"] for o in j["outputs"]}
    for out in inbox.glob("p*.bmp"):
        assert md5(out) in sums, f"{out.name} is torn"
    hidden = [p for p in inbox.iterdir() if p.name.startswith(".")]
    assert hidden and all(p.name.endswith(".part") for p in hidden), hidden
    assert any(p.stat().st_size > 0 for p in hidden), "stopping threw the received bytes away"
    created, uploads = state["create_requests"], len(state["uploads"])

    emu.state.set_faults([], replace=True)
    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 0, out
    state = emu.state.snapshot()
    assert state["create_requests"] == created == TICKETS
    assert len(state["uploads"]) == uploads == TICKETS
    assert all(j["starts"] == j["start_requests"] == 1 for j in state["jobs"])
    resumed = [d for d in state["downloads"] if d["status"] == 206 and d["range"]]
    assert resumed, "no download resumed with Range after the restart"
    # The validator of the first download was kept in the state file, so the resumes after the
    # restart are conditional: a file changed on the server would come whole, not spliced.
    assert all(d["if_range"] for d in resumed), resumed
    assert sorted(p.name for p in inbox.glob("*.job.done")) == [
        f"p{i}.job.done" for i in range(TICKETS)
    ]
    for i in range(TICKETS):
        assert md5(inbox / f"p{i}.bmp") in {
            o["checksum"] for j in state["jobs"] for o in j["outputs"]
        }
    assert invariants(inbox, state) == []


def _catches_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = next(int(line.split()[1], 16) for line in status.splitlines() if line[:7] == "SigCgt:")
    return bool(caught & (1 << (signal.SIGTERM - 1)))


async def test_sigterm_while_the_agent_is_still_starting_exits_cleanly(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """A service manager may stop the agent while it still imports its modules (~0.5 s): the
    first thing it does is take SIGTERM, so that ends it with 0, not killed by the signal."""
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "s.db")
    for attempt in range(3):  # a busy machine may let the child get past its start first
        log = tmp_path / f"agent-{attempt}.log"
        proc = spawn_agent(cfg, log=log)
        try:
            deadline = time.monotonic() + 10
            while not _catches_sigterm(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.001)  # blocking on purpose: the child needs nothing from this loop
            starting = log.read_text() == ""  # not a line yet: still importing
            proc.send_signal(signal.SIGTERM)
            await wait_for(lambda p=proc: p.poll() is not None, 5.0, "the agent to stop")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        assert proc.returncode == 0, log.read_text()[-2000:]
        if starting:
            return
    raise AssertionError("SIGTERM was never caught while the agent was still importing")
