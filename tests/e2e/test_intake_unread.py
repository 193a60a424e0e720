"""A ticket the agent was told about but could not read is read again once it can be.

The watcher announces a settled ticket once and remembers it (size, mtime, inode), so neither a
reconcile scan nor the scan that finds a vanished folder back announces it again; the scheduler
reads it only then. Were that read to fail and the ticket be dropped, it would stay ``NAME.job``
with no record, no sidecar and no log line until the agent restarts. The 60-minute soak (issue
13) lost invalid tickets this way: written one second before the watched ``share`` folder was
renamed away, their parse-grace re-read found the folder gone.

A real agent in this process against the emulator; the moment the folder goes (or the read
fails) is placed exactly by wrapping the scheduler's ticket read, as the emulator's hooks place a
kill: the read that finds the folder gone is the one the test chose, whatever the timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import yaml
from e2e_harness import png_bytes, wait_for, write_config

from agent import folder
from agent.config import load_config
from agent.daemon import Agent
from agent.emulator import RunningEmulator
from agent.store import Store

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]
BROKEN = "input: nothing-here.png\ntarget: jpg\ncolour: blue\n"
RECONCILE = 0.5


@contextlib.asynccontextmanager
async def running_agent(tmp_path: Path, base_url: str, share: Path) -> AsyncIterator[Agent]:
    """`convert-agent run` in this process, watching ``share`` and its subfolders."""
    cfg_path = write_config(
        tmp_path / "config.yaml",
        base_url,
        [{"path": str(share), "recursive": True}],
        tmp_path / "state" / "state.db",
        tickets={"parse_grace_seconds": 2},
        polling={"reconcile_interval": RECONCILE},
        dashboard={"enabled": False},
        notifications={"enabled": False},
    )
    agent = Agent(load_config(cfg_path, {}))
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: agent.ready.is_set() or task.done(), 20, "the agent to start")
        if task.done():
            task.result()
        yield agent
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 20)


def before_read(
    monkeypatch: pytest.MonkeyPatch, ticket: Path, nth: int, act: Callable[[], None]
) -> list[Path]:
    """Run ``act`` just before the scheduler's ``nth`` read of ``ticket``; returns the reads."""
    real = folder.read_ticket
    reads: list[Path] = []

    def read(path: Path) -> bytes:
        if path == ticket:
            reads.append(path)
            if len(reads) == nth:
                act()
        return real(path)

    monkeypatch.setattr(folder, "read_ticket", read)
    return reads


def reachable(agent: Agent) -> bool:
    assert agent.watcher is not None
    return bool(agent.watcher.snapshot()["folders"][0]["reachable"])


def drop(where: Path, stem: str) -> Path:
    (where / f"{stem}.png").write_bytes(png_bytes())
    ticket = where / f"{stem}.job"
    ticket.write_text(f"input: {stem}.png\ntarget: jpg\n")
    return ticket


async def _vanish_and_restore(
    agent: Agent, reads: list[Path], nth: int, share: Path, away: Path
) -> None:
    await wait_for(lambda: len(reads) >= nth, 20, f"read {nth} of the ticket")
    assert not share.exists()
    await wait_for(lambda: not reachable(agent), 10, "the agent to see the folder gone")
    os.rename(away, share)  # mounted again, with the same tickets


async def test_a_broken_ticket_whose_folder_vanished_during_its_parse_grace_fails_once_back(
    tmp_path: Path, make_emulator: MakeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soak's case: a just-written broken ticket is read again during the parse grace (it
    may still be being written); the share is unmounted just before that re-read."""
    emu = await make_emulator()
    share, away = tmp_path / "share", tmp_path / "share.away"
    wave = share / "w0"
    wave.mkdir(parents=True)
    broken = wave / "b.job"
    reads = before_read(monkeypatch, broken, 2, lambda: os.rename(share, away))
    async with running_agent(tmp_path, emu.base_url, share) as agent:
        broken.write_text(BROKEN)
        await _vanish_and_restore(agent, reads, 2, share, away)
        fresh = drop(wave, "fresh")  # a new ticket in the folder that came back
        await wait_for(
            lambda: (wave / "b.job.failed").exists(), 20, "the broken ticket to be failed"
        )
        await wait_for(lambda: (wave / "fresh.job.done").exists(), 20, f"{fresh.name} done")
    side = yaml.safe_load((wave / "b.status.yaml").read_text())
    assert side["phase"] == "failed" and "colour" in side["error"], side


async def test_a_ticket_whose_folder_vanished_before_it_was_read_runs_once_back(
    tmp_path: Path, make_emulator: MakeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid ticket announced a moment before the share goes: its first read finds nothing."""
    emu = await make_emulator()
    share, away = tmp_path / "share", tmp_path / "share.away"
    wave = share / "w0"
    wave.mkdir(parents=True)
    ticket = wave / "a.job"
    reads = before_read(monkeypatch, ticket, 1, lambda: os.rename(share, away))
    async with running_agent(tmp_path, emu.base_url, share) as agent:
        (wave / "a.png").write_bytes(png_bytes())
        ticket.write_text("input: a.png\ntarget: jpg\n")
        await _vanish_and_restore(agent, reads, 1, share, away)
        await wait_for(lambda: (wave / "a.job.done").exists(), 20, "the ticket to be done")
    assert (wave / "a.jpg").is_file()
    jobs = emu.state.snapshot()["jobs"]
    assert [j["starts"] for j in jobs] == [1], jobs


async def test_a_ticket_that_could_not_be_read_once_is_read_at_the_next_scan(
    tmp_path: Path, make_emulator: MakeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that fails for another reason (permissions, an I/O error on a share) is logged and
    tried again, not given up on: fixing the permissions changes neither size nor mtime."""
    emu = await make_emulator()
    share = tmp_path / "share"
    share.mkdir()
    ticket = share / "a.job"

    def refuse() -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(ticket))

    reads = before_read(monkeypatch, ticket, 1, refuse)
    async with running_agent(tmp_path, emu.base_url, share):
        (share / "a.png").write_bytes(png_bytes())
        ticket.write_text("input: a.png\ntarget: jpg\n")
        await wait_for(lambda: (share / "a.job.done").exists(), 20, "the ticket to be done")
    assert len(reads) >= 2


async def test_a_ticket_whose_record_could_not_be_written_is_taken_up_at_the_next_scan(
    tmp_path: Path, make_emulator: MakeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state refuses the new record (a full disk): the ticket is not recorded, so nothing
    but the watcher can bring it back."""
    emu = await make_emulator()
    share = tmp_path / "share"
    share.mkdir()
    ticket = share / "a.job"
    async with running_agent(tmp_path, emu.base_url, share) as agent:
        store = agent.store
        assert isinstance(store, Store)
        real = store.add_ticket
        refused: list[str] = []

        def add_ticket(**fields: object) -> object:
            if fields["path"] == str(ticket) and not refused:
                refused.append(str(fields["path"]))
                raise sqlite3.OperationalError("database or disk is full")
            return real(**fields)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "add_ticket", add_ticket)
        (share / "a.png").write_bytes(png_bytes())
        ticket.write_text("input: a.png\ntarget: jpg\n")
        await wait_for(lambda: (share / "a.job.done").exists(), 20, "the ticket to be done")
    assert refused == [str(ticket)]


async def test_a_ticket_whose_record_was_rolled_back_is_taken_up_at_the_next_scan(
    tmp_path: Path, make_emulator: MakeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record was written, but the commit it joined failed and was rolled back: the ticket's
    first step finds no record (it reads as pruned), and the watcher announced it already."""
    emu = await make_emulator()
    share = tmp_path / "share"
    share.mkdir()
    ticket = share / "a.job"
    async with running_agent(tmp_path, emu.base_url, share) as agent:
        store = agent.store
        assert isinstance(store, Store)
        real_add, real_commit = store.add_ticket, store.commit
        armed: list[bool] = []

        def add_ticket(**fields: object) -> object:
            rec = real_add(**fields)  # type: ignore[arg-type]
            if fields["path"] == str(ticket) and not armed:
                armed.append(True)
            return rec

        def commit() -> None:
            if armed and armed[0]:
                armed[0] = False
                store._lose()  # what commit() does when SQLite's COMMIT fails
                raise sqlite3.OperationalError("disk I/O error")
            real_commit()

        monkeypatch.setattr(store, "add_ticket", add_ticket)
        monkeypatch.setattr(store, "commit", commit)
        (share / "a.png").write_bytes(png_bytes())
        ticket.write_text("input: a.png\ntarget: jpg\n")
        await wait_for(lambda: (share / "a.job.done").exists(), 20, "the ticket to be done")
    assert armed == [False]
