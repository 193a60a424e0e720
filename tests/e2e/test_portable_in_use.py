"""Windows' sharing violations, with the stand-in forced portable mode has on Linux: a ticket or
an input another program holds open waits like a file still being copied and is taken once it
can be opened; an output that would replace a file another program holds open waits (after a
few quick retries) with a plain message, keeps its downloaded part, and is placed once the file
is closed. Nothing is lost and nothing is spent twice.

"Another program holds it open" is played by this test process holding a lock on the file (an
open-file-description lock, ``F_OFD_SETLK``): in forced portable mode
(``CONVERT_AGENT_FORCE_PORTABLE=1``) the agent's ``platform.check_in_use`` turns that into the
``PermissionError`` with ``winerror`` 32 that Windows raises, so the agent runs the code path it
runs there. A real Windows run is not part of this suite."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from e2e_harness import (
    agent_cmd,
    agent_env,
    invariants,
    md5,
    png_bytes,
    sidecar,
    spawn_agent,
    stop_agent,
    wait_for,
    wait_for_log,
    write_config,
)

from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture(autouse=True)
def _portable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVERT_AGENT_FORCE_PORTABLE", "1")  # the agents spawned inherit it


def hold_lock(fd: int) -> None:
    """A write lock on the whole file, held by this open file until it is closed."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))


@contextlib.contextmanager
def held_open(path: Path) -> Iterator[None]:
    """``path`` open in "another program" that shares it with nobody, until the block ends."""
    fd = os.open(path, os.O_RDWR)
    try:
        hold_lock(fd)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _setup(tmp_path: Path, emu: RunningEmulator, ticket: str) -> tuple[Path, Path, Path]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "a.job").write_text(ticket)
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "s.db")
    return inbox, cfg, tmp_path / "agent.log"


async def _cli(config: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *agent_cmd(config, *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=agent_env(),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


# What the agent says of a ticket it cannot read, once it has been open for longer than a copy
# would hold it (the settle time + scheduler.IN_USE_NOTICE_SECONDS, 10 s).
HELD_TICKET = "a.job is open in another program, which keeps the agent from reading it"


async def test_a_ticket_open_in_another_program_waits_then_finishes_when_closed(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox, cfg, log = _setup(tmp_path, emu, "input: a.png\ntarget: jpg\n")
    with held_open(inbox / "a.job"):
        proc = spawn_agent(cfg, log=log)
        try:
            await wait_for_log(log, "a.job is open in another program; it is read once")
            await asyncio.sleep(1.5)  # several looks at it while it stays open
            assert HELD_TICKET not in log.read_text()  # quiet at first: a copy may hold it
            assert not (inbox / "a.status.yaml").exists()  # not read, not recorded
            assert emu.state.create_requests == 0
            # Held past the notice time: a warning, and `status` and `why` say it plainly.
            await wait_for_log(log, HELD_TICKET, timeout=30)
            code, out = await _cli(cfg, "status")
            assert code == 0 and "not read yet" in out and HELD_TICKET in out, out
            assert "close it there and the agent goes on by itself" in out
            code, out = await _cli(cfg, "why", "a.job")
            assert code == 0 and str(inbox / "a.job") in out and HELD_TICKET in out, out
            code, out = await _cli(cfg, "status", "--json")
            held = json.loads(out)["in_use"]
            assert [h["path"] for h in held] == [str(inbox / "a.job")], out
            assert not (inbox / "a.status.yaml").exists()  # still nothing recorded
            assert emu.state.create_requests == 0
        except BaseException:
            await stop_agent(proc)
            raise
    try:
        await wait_for((inbox / "a.job.done").exists, 30, "a.job.done after it was closed")
        assert "a.job is no longer open in another program" in log.read_text()
        code, out = await _cli(cfg, "status", "--json")
        assert json.loads(out)["in_use"] == [], out
    finally:
        assert await stop_agent(proc) == 0, log.read_text()[-3000:]
    assert sidecar(inbox, "a")["phase"] == "done"
    assert emu.state.create_requests == 1
    assert invariants(inbox, emu.state.snapshot()) == []


async def test_an_input_open_in_another_program_waits_before_any_job_is_made(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox, cfg, log = _setup(tmp_path, emu, "input: a.png\ntarget: jpg\n")
    with held_open(inbox / "a.png"):
        proc = spawn_agent(cfg, log=log)
        try:
            await wait_for((inbox / "a.status.yaml").exists, 15, "the ticket accepted")
            await asyncio.sleep(1.5)
            # Quiet at first (a copy still running holds its file open too): pending, no error.
            assert sidecar(inbox, "a")["error"] is None, sidecar(inbox, "a")
            await wait_for(
                lambda: (
                    "open in another program"
                    in str(sidecar(inbox, "a") if (inbox / "a.status.yaml").exists() else {})
                ),
                30,
                "the sidecar saying the input is open in another program",
            )
            view = sidecar(inbox, "a")
            assert view["phase"] == "waiting" and view["error_title"] == "file in use", view
            assert "a.png is open in another program" in view["error"]
            await asyncio.sleep(1.0)
            assert emu.state.create_requests == 0  # nothing spent on an input not readable
        except BaseException:
            await stop_agent(proc)
            raise
    try:
        await wait_for((inbox / "a.job.done").exists, 30, "a.job.done after it was closed")
    finally:
        assert await stop_agent(proc) == 0, log.read_text()[-3000:]
    assert sidecar(inbox, "a")["phase"] == "done"
    assert invariants(inbox, emu.state.snapshot()) == []


async def test_an_output_replacing_a_file_open_in_another_program_waits_and_loses_nothing(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox, cfg, log = _setup(
        tmp_path, emu, "input: a.png\ntarget: jpg\noutput: {on_conflict: overwrite}\n"
    )
    (inbox / "a.jpg").write_bytes(b"the user's old a.jpg, open in a viewer")
    with held_open(inbox / "a.jpg"):
        proc = spawn_agent(cfg, log=log)
        try:
            await wait_for(
                lambda: (
                    "open in another program"
                    in str(sidecar(inbox, "a") if (inbox / "a.status.yaml").exists() else {})
                ),
                30,
                "the sidecar saying the output's file is open in another program",
            )
            view = sidecar(inbox, "a")
            assert view["phase"] == "waiting" and view["error_title"] == "file in use", view
            assert "a.jpg is open in another program" in view["error"], view
            assert "close it there" in view["error"]
            assert (inbox / "a.jpg").read_bytes() == b"the user's old a.jpg, open in a viewer"
            parts = [p for p in inbox.iterdir() if p.name.endswith(".part")]
            assert len(parts) == 1  # the verified download is kept, not spent again
            downloads = len(
                [r for r in emu.state.snapshot()["requests"] if r["route"] == "download"]
            )
        except BaseException:
            await stop_agent(proc)
            raise
    try:
        await wait_for((inbox / "a.job.done").exists, 60, "a.job.done after it was closed")
    finally:
        assert await stop_agent(proc) == 0, log.read_text()[-3000:]
    state = emu.state.snapshot()
    assert len([r for r in state["requests"] if r["route"] == "download"]) == downloads
    assert md5(inbox / "a.jpg") == sidecar(inbox, "a")["outputs"][0]["checksum"]
    assert invariants(inbox, state) == []
    assert not [p for p in inbox.iterdir() if p.name.endswith(".part")]


async def test_a_finished_ticket_open_in_another_program_is_filed_once_it_is_closed(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """The rename to NAME.job.done fails while another program holds the ticket: the outputs
    are placed, the sidecar says done and why the ticket is not filed yet, and it is filed once
    the program lets go."""
    emu = await make_emulator(processing_seconds=2)
    inbox, cfg, log = _setup(tmp_path, emu, "input: a.png\ntarget: jpg\n")
    proc = spawn_agent(cfg, log=log)
    try:
        await wait_for((inbox / "a.status.yaml").exists, 15, "the ticket accepted")
        with held_open(inbox / "a.job"):
            await wait_for(
                lambda: "waiting_for" in sidecar(inbox, "a"),
                30,
                "the sidecar saying the ticket cannot be filed yet",
            )
            view = sidecar(inbox, "a")
            assert view["phase"] == "done", view
            assert view["waiting_for"].startswith("the ticket is not filed yet: "), view
            assert "a.job is open in another program" in view["waiting_for"], view
            assert "close it there" in view["waiting_for"], view
            assert (inbox / "a.job").exists() and not (inbox / "a.job.done").exists()
            assert (inbox / "a.jpg").exists()
            await asyncio.sleep(12)  # retried meanwhile (every 10 s): the note stays
            assert "waiting_for" in sidecar(inbox, "a")
            assert not (inbox / "a.job.done").exists()
        await wait_for((inbox / "a.job.done").exists, 30, "a.job.done after it was closed")
        assert "waiting_for" not in sidecar(inbox, "a")  # the note is gone with the problem
        text = log.read_text()
        assert text.count("could not file the ticket yet") == 1, text[-3000:]  # said once
    finally:
        assert await stop_agent(proc) == 0, log.read_text()[-3000:]
    assert sidecar(inbox, "a")["phase"] == "done"
    assert emu.state.create_requests == 1
    assert invariants(inbox, emu.state.snapshot()) == []
