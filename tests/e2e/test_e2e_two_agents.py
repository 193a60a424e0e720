"""Two agents without a shared state on one folder (agent.foldermark): real agent processes with
their own SQLite states against the emulator, in real folders.

The first agent marks the folder; the second refuses it with a plain message and converts
nothing there; every ticket is converted once. A stale mark (a dead process here, or another
host's mark that no longer changes) is taken over; two agents started together end with one
owner; a state file on a FUSE mount is refused with exit 3.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import (
    png_bytes,
    run_agent,
    spawn_agent,
    stop_agent,
    wait_for,
    wait_for_log,
    write_config,
)
from fusemount import bindfs as _bindfs

from agent.emulator import RunningEmulator
from agent.foldermark import MARK_NAME, Identity, machine_id, mark_bytes, read_mark

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]
MARKS = {"heartbeat_seconds": 0.5, "stale_seconds": 2.0}
REFUSAL = re.compile(
    r"(?P<folder>\S+) is served by agent (?P<name>\S+) on host (?P<host>\S+) "
    r"\(pid (?P<pid>\d+), last seen (?P<age>\d+)s ago\); share a PostgreSQL state to run "
    r"several agents"
)


def _config(tmp_path: Path, emu: RunningEmulator, name: str, inbox: Path) -> Path:
    return write_config(
        tmp_path / f"{name}.yaml", emu.base_url, [inbox], tmp_path / f"{name}.db", marks=MARKS
    )


def _log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _jobs_by_input(emu: RunningEmulator) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for job in emu.state.snapshot()["jobs"]:
        for inp in job["inputs"]:
            by.setdefault(str(inp["filename"]), []).append(job)
    return by


def _drop(inbox: Path, names: range) -> None:
    for i in names:
        (inbox / f"p{i}.png").write_bytes(png_bytes(color=("red", "green", "blue")[i % 3]))
        (inbox / f"p{i}.job").write_text(f"input: p{i}.png\ntarget: jpg\n")


def _assert_each_converted_once(inbox: Path, emu: RunningEmulator, names: range) -> None:
    by_input = _jobs_by_input(emu)
    assert sorted(by_input) == sorted(f"p{i}.png" for i in names), sorted(by_input)
    for name, jobs in by_input.items():
        assert len(jobs) == 1, (name, [j["id"] for j in jobs])
        assert jobs[0]["starts"] == jobs[0]["start_requests"] == 1, jobs[0]
    outputs = sorted(p.name for p in inbox.glob("*.jpg"))
    assert outputs == sorted(f"p{i}.jpg" for i in names), outputs  # no "p1 (1).jpg"


async def test_a_second_agent_refuses_a_served_folder_and_every_ticket_is_converted_once(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg_a, cfg_b = _config(tmp_path, emu, "a", inbox), _config(tmp_path, emu, "b", inbox)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = spawn_agent(cfg_a, "run", log=log_a)
    b = None
    try:
        await wait_for_log(log_a, f"serving {inbox} (share inbox)")
        mark = read_mark(inbox)
        assert mark is not None and mark.pid == a.pid and mark.share == "inbox"
        b = spawn_agent(cfg_b, "run", log=log_b)
        await wait_for(lambda: REFUSAL.search(_log(log_b)) is not None, 15, "B's refusal")
        refusal = REFUSAL.search(_log(log_b))
        assert refusal is not None
        assert refusal["folder"] == str(inbox) and int(refusal["pid"]) == a.pid
        assert refusal["host"] == socket.gethostname() and refusal["name"] == mark.name
        assert f"serving {inbox}" not in _log(log_b)

        # B's status names the agent that serves the folder.
        code, out = await run_agent(cfg_b, "status", "--json")
        assert code == 0, out
        (seen,) = json.loads(out)["marks"]
        assert seen["owner"] == "another agent" and f"(pid {a.pid}," in seen["detail"]
        code, out = await run_agent(cfg_a, "status")
        assert code == 0 and f"folder {inbox} (share inbox): served by this agent" in out, out

        # A third agent run once, with every folder refused, says so and exits 6.
        code, out = await run_agent(_config(tmp_path, emu, "c", inbox), "run", "--once")
        assert code == 6, out
        assert REFUSAL.search(out) and "every folder is served by another agent" in out, out

        _drop(inbox, range(10))
        await wait_for(
            lambda: all((inbox / f"p{i}.job.done").exists() for i in range(10)), 60, "10 done"
        )
        assert b.poll() is None and a.poll() is None
        # B is still there and still out: a few of its heartbeats later it has taken nothing.
        until = time.monotonic() + 4 * MARKS["heartbeat_seconds"]
        while time.monotonic() < until:
            assert "accepted" not in _log(log_b) and f"serving {inbox}" not in _log(log_b)
            await asyncio.sleep(0.1)
        _assert_each_converted_once(inbox, emu, range(10))

        # A stops cleanly: its mark goes, and B takes the folder at its next heartbeat.
        assert await stop_agent(a) == 0
        assert read_mark(inbox) is None or read_mark(inbox).pid == b.pid  # type: ignore[union-attr]
        await wait_for_log(log_b, f"serving {inbox} (share inbox)", timeout=10)
        _drop(inbox, range(10, 12))
        await wait_for(
            lambda: all((inbox / f"p{i}.job.done").exists() for i in range(10, 12)), 30, "B's"
        )
        _assert_each_converted_once(inbox, emu, range(12))
    finally:
        await stop_agent(a)
        if b is not None:
            assert await stop_agent(b) == 0
    assert not (inbox / MARK_NAME).exists()  # removed by the clean stop
    assert not [p.name for p in inbox.iterdir() if p.name.startswith(".")]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("whose", ["a dead process here", "another host, an hour old"])
async def test_a_stale_mark_is_taken_over(
    tmp_path: Path, make_emulator: MakeEmulator, whose: str
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    if whose == "a dead process here":
        pid = _dead_pid()
        other = Identity(
            agent_id="deadbeef00000000",
            name="gone-agent",
            state="sqlite:elsewhere:/old.db",
            host=socket.gethostname(),
            machine=machine_id(),
            pid=pid,
        )
        heartbeat = time.time()
        expect = f"its process {pid} on this machine is gone"
    else:
        other = Identity(
            agent_id="0123456789abcdef",
            name="far-agent",
            state="sqlite:nas-host:/s.db",
            host="nas-host",
            machine="boot:far",
            pid=os.getpid(),  # alive here, but not the same machine: it is not looked at
        )
        heartbeat = time.time() - 3600
        expect = "its heartbeat has not changed for"
    (inbox / MARK_NAME).write_bytes(
        mark_bytes(other, share="inbox", folder=inbox, token="old", seq=7, now=heartbeat)
    )
    cfg = _config(tmp_path, emu, "a", inbox)
    log = tmp_path / "a.log"
    proc = spawn_agent(cfg, "run", log=log)
    try:
        await wait_for_log(log, f"took over {inbox} (share inbox) from agent {other.name}")
        text = _log(log)
        assert expect in text, text
        if whose == "another host, an hour old":
            # Refused first, while the mark's standing still was watched on this clock.
            assert text.index("is served by agent far-agent on host nas-host") < text.index(
                "took over"
            )
        mark = read_mark(inbox)
        assert mark is not None and mark.pid == proc.pid
        _drop(inbox, range(1))
        await wait_for(lambda: (inbox / "p0.job.done").exists(), 30, "p0 done")
        _assert_each_converted_once(inbox, emu, range(1))
    finally:
        assert await stop_agent(proc) == 0
    assert not (inbox / MARK_NAME).exists()


async def test_two_agents_starting_together_end_with_one_owner(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    for round_ in range(3):
        inbox = tmp_path / f"inbox{round_}"
        inbox.mkdir()
        cfgs = [_config(tmp_path, emu, f"r{round_}{n}", inbox) for n in "ab"]
        logs = [tmp_path / f"r{round_}{n}.log" for n in "ab"]
        procs = [spawn_agent(c, "run", log=lg) for c, lg in zip(cfgs, logs, strict=True)]
        try:

            def decided(inbox: Path = inbox, logs: list[Path] = logs) -> bool:
                return all(
                    f"serving {inbox}" in _log(lg) or REFUSAL.search(_log(lg)) for lg in logs
                )

            await wait_for(decided, 20, "both agents to decide")
            winners = [p for p, lg in zip(procs, logs, strict=True) if "serving" in _log(lg)]
            assert len(winners) == 1, [_log(lg) for lg in logs]
            mark = read_mark(inbox)
            assert mark is not None and mark.pid == winners[0].pid
            names = range(round_ * 3, round_ * 3 + 3)
            _drop(inbox, names)

            def done(inbox: Path = inbox, names: range = names) -> bool:
                return all((inbox / f"p{i}.job.done").exists() for i in names)

            await wait_for(done, 30, "the round's tickets")
            assert all(p.poll() is None for p in procs)
        finally:
            for p in procs:
                await stop_agent(p)
    by_input = _jobs_by_input(emu)
    assert len(by_input) == 9 and all(len(j) == 1 for j in by_input.values()), by_input


# --------------------------------------------------------------------------- a FUSE mount


async def test_a_state_file_on_a_fuse_mount_is_refused_at_start(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    backing, mount = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    with _bindfs(backing, mount):
        assert "fuse" in Path("/proc/self/mounts").read_text()
        state = mount / "state.db"
        cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], state)
        code, out = await run_agent(cfg, "run", "--once")
        assert code == 3, out
        # bindfs shows as `fuse` or `fuse.bindfs` in /proc/self/mountinfo, by FUSE version.
        assert re.search(rf"the state file {re.escape(str(state))} is on a fuse\S* filesystem", out)
        assert "local disk" in out and "PostgreSQL" in out, out
        assert list(backing.iterdir()) == []  # not even the lock file was made
        assert not (inbox / MARK_NAME).exists()
        assert len(emu.state.jobs) == 0


async def test_an_agent_back_from_a_crash_leaves_its_tickets_in_a_folder_taken_over(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """A is killed while its job runs; B takes the folder over (A's pid is gone) and converts the
    ticket itself. A, started again while B serves the folder, refuses it and does not resume its
    own unfinished ticket there: its job's output is never fetched, nothing is written twice."""
    emu = await make_emulator(processing_seconds=3)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg_a, cfg_b = _config(tmp_path, emu, "a", inbox), _config(tmp_path, emu, "b", inbox)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = spawn_agent(cfg_a, "run", log=log_a)
    b = a2 = None
    try:
        await wait_for_log(log_a, f"serving {inbox}")
        _drop(inbox, range(1))
        await wait_for(lambda: any(j.starts for j in emu.state.jobs.values()), 15, "A's job")
        (a_job,) = emu.state.jobs
        await stop_agent(a, signal.SIGKILL)
        b = spawn_agent(cfg_b, "run", log=log_b)
        await wait_for_log(log_b, f"took over {inbox}")
        a2 = spawn_agent(cfg_a, "run", log=log_a)
        await wait_for(lambda: len(REFUSAL.findall(_log(log_a))) >= 1, 15, "A's refusal")
        await wait_for(lambda: (inbox / "p0.job.done").exists(), 30, "B converts p0")
        # A's own job completes too; A, holding the folder back, never fetches its output.
        await wait_for(lambda: emu.state.jobs[a_job].status == "completed", 15, "A's job done")
        until = time.monotonic() + 6 * MARKS["heartbeat_seconds"]
        while time.monotonic() < until:
            job = emu.state.snapshot()["jobs"][0]
            assert job["id"] == a_job and job["outputs"][0]["downloads_counter"] == 0, job
            await asyncio.sleep(0.1)
        assert sorted(p.name for p in inbox.glob("*.jpg")) == ["p0.jpg"]
        assert a2.poll() is None
    finally:
        for p in (a, b, a2):
            if p is not None:
                await stop_agent(p)
