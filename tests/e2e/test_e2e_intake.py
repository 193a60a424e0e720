"""Intake: tickets present at startup, tickets written slowly, inputs still being copied."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import (
    invariants,
    outputs_match,
    png_bytes,
    run_agent,
    sidecar,
    spawn_agent,
    stop_agent,
    wait_for,
    wait_for_log,
    write_config,
)

from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


async def _write_slowly(path: Path, chunks: list[str], pause: float) -> None:
    """Append ``chunks`` to ``path`` through one open file, flushing each and pausing between."""
    with open(path, "w") as f:
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(pause)
            f.write(chunk)
            f.flush()
            os.fsync(f.fileno())


async def test_tickets_present_at_startup_are_processed(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    for stem in ("one", "two"):
        (inbox / f"{stem}.png").write_bytes(png_bytes(color="green"))
        (inbox / f"{stem}.job").write_text(f"input: {stem}.png\ntarget: jpg\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")

    code, out = await run_agent(cfg, "run", "--once")

    assert code == 0, out
    assert (inbox / "one.job.done").exists() and (inbox / "two.job.done").exists()
    outputs_match(inbox, emu.state.snapshot(), ["one.jpg", "two.jpg"])
    assert invariants(inbox, emu.state.snapshot()) == []


async def test_a_ticket_written_in_chunks_over_2s_is_never_read_half_written(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """Pauses (0.5 s) longer than the settle time (0.1 s): each prefix is stable long enough to
    be read, and none parses, so only the parse grace keeps the agent from failing it."""
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "slow.png").write_bytes(png_bytes())
    cfg = write_config(
        tmp_path / "c.yaml",
        emu.base_url,
        [inbox],
        tmp_path / "state.db",
        tickets={"parse_grace_seconds": 6},
    )
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, "run", log=log)
    try:
        await wait_for_log(log, "watching")
        chunks = [
            "# written by a slow tool\ninput: slow.png\n",  # no target yet
            "targ",  # not YAML
            "et: webp\nopt",  # not YAML
            "ions: {quality: 4",  # unclosed flow mapping
            '2}\noutput: {name: "slow-out.{ext}"}\n',
        ]
        await _write_slowly(inbox / "slow.job", chunks, 0.55)
        await wait_for(lambda: (inbox / "slow.job.done").exists(), 20, "slow.job.done")
    finally:
        await stop_agent(proc)

    state = emu.state.snapshot()
    assert len(state["jobs"]) == 1, state["jobs"]
    assert (
        state["jobs"][0]["targets"] == ["webp"]
        and state["jobs"][0]["starts"] == state["jobs"][0]["start_requests"] == 1
    )
    (job,) = emu.state.jobs.values()
    assert job.conversions[0].options == {"quality": 42}
    assert not (inbox / "slow.job.failed").exists()
    outputs_match(inbox, state, ["slow-out.webp"])
    assert invariants(inbox, state) == []


async def test_a_ticket_written_in_pauses_shorter_than_settle_is_never_read_half_written(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """Here a prefix parses as a valid ticket (`target: we`): the settle gate must hold it."""
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "slow.png").write_bytes(png_bytes())
    cfg = write_config(
        tmp_path / "c.yaml",
        emu.base_url,
        [inbox],
        tmp_path / "state.db",
        tickets={"settle_seconds": 1.0},
    )
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, "run", log=log)
    try:
        await wait_for_log(log, "watching")
        chunks = ["input: slow.png\n", "target: we", "bp\n", "options: {quality: 42}\n"]
        await _write_slowly(inbox / "slow.job", chunks, 0.7)
        await wait_for(lambda: (inbox / "slow.job.done").exists(), 20, "slow.job.done")
    finally:
        await stop_agent(proc)

    state = emu.state.snapshot()
    assert len(state["jobs"]) == 1, state["jobs"]
    assert state["jobs"][0]["targets"] == ["webp"]
    (job,) = emu.state.jobs.values()
    assert job.conversions[0].options == {"quality": 42}
    outputs_match(inbox, state, ["slow.webp"])
    assert invariants(inbox, state) == []


async def test_a_ticket_waits_for_its_input_while_it_is_still_being_copied(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(
        tmp_path / "c.yaml",
        emu.base_url,
        [inbox],
        tmp_path / "state.db",
        tickets={"settle_seconds": 0.5},
    )
    data = png_bytes((400, 300), "purple") + os.urandom(30_000)  # trailing bytes: still a png
    pieces = [data[i : i + len(data) // 16 + 1] for i in range(0, len(data), len(data) // 16 + 1)]
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, "run", log=log)
    try:
        await wait_for_log(log, "watching")
        big = inbox / "big.png"
        with open(big, "wb") as f:
            f.write(pieces[0])
            f.flush()
            (inbox / "big.job").write_text("input: big.png\ntarget: jpg\n")
            for piece in pieces[1:]:  # a copy in progress: ~1.5 s, a write every 0.1 s
                await asyncio.sleep(0.1)
                f.write(piece)
                f.flush()
        await wait_for(lambda: (inbox / "big.job.done").exists(), 20, "big.job.done")
    finally:
        await stop_agent(proc)

    state = emu.state.snapshot()
    assert [u["size"] for u in state["uploads"]] == [len(data)]
    assert (
        len(state["jobs"]) == 1
        and state["jobs"][0]["starts"] == state["jobs"][0]["start_requests"] == 1
    )
    assert sidecar(inbox, "big")["phase"] == "done"
    outputs_match(inbox, state, ["big.jpg"])
    assert invariants(inbox, state) == []
