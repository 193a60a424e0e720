"""A job is started at most once per ticket, and the agent creates one job per ticket.

Fast tests of the defences in `Scheduler._step`/`_start` (see the scheduler's docstring): the
real agent process against the emulator, which counts every start request and every POST /jobs
per Idempotency-Key. A kill is placed exactly with the emulator's `after_handler` hook: it runs
after the server acted on the request and before its answer leaves, so the agent dies having
sent the request but never hearing the answer — the worst moment for "did it start?".
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from e2e_harness import (
    invariants,
    png_bytes,
    run_agent,
    sidecar,
    spawn_agent,
    stop_agent,
    wait_for,
    write_config,
)

from agent.emulator import FaultSpec, RunningEmulator
from agent.emulator.common import PROCESSOR_KEY

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


def _inbox(tmp_path: Path, *stems: str) -> tuple[Path, Path, Path]:
    """An inbox with a png → jpg ticket per stem: (inbox, config, state db)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for stem in stems or ("a",):
        (inbox / f"{stem}.png").write_bytes(png_bytes())
        (inbox / f"{stem}.job").write_text(f"input: {stem}.png\ntarget: jpg\n")
    return inbox, tmp_path / "c.yaml", tmp_path / "s.db"


def _ticket_row(db: Path) -> dict[str, Any]:
    """The ticket's row as committed in the agent's state store right now."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT phase, start_sent, job_id FROM tickets").fetchall()
    finally:
        conn.close()
    assert len(rows) == 1, rows
    return dict(rows[0])


async def _kill_right_after(
    emu: RunningEmulator, cfg: Path, db: Path, route: str, method: str
) -> dict[str, Any]:
    """Run the agent; SIGKILL it the moment the server has acted on its first ``method``
    request on ``route`` and before the answer is sent. Returns the ticket's committed row at
    that moment (and the status the answer would have had)."""
    seen: dict[str, Any] = {}
    holder: dict[str, subprocess.Popen[bytes]] = {}

    def hook(r: str, m: str, path: str, status: int) -> None:
        if r == route and m == method and not seen:
            os.kill(holder["proc"].pid, signal.SIGKILL)
            holder["proc"].wait(5)
            seen.update(_ticket_row(db), status=status)

    emu.state.after_handler = hook
    holder["proc"] = proc = spawn_agent(cfg)
    try:
        await wait_for(lambda: bool(seen), 30, f"the agent's {method} on {route}")
    finally:
        emu.state.after_handler = None
        await stop_agent(proc, signal.SIGKILL)
    return seen


async def _kill_right_after_the_start_is_acted_on(
    emu: RunningEmulator, cfg: Path, db: Path
) -> dict[str, Any]:
    row = await _kill_right_after(emu, cfg, db, "start", "PATCH")
    (job,) = emu.state.snapshot()["jobs"]
    assert (job["starts"], job["start_requests"]) == (1, 1), job  # the server did start it
    return row


async def test_a_start_whose_answer_was_lost_in_a_kill_is_not_sent_again_after_restart(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    # Kills the mutant without the read-back before re-sending a start (`if not vol.fresh`).
    emu = await make_emulator()
    inbox, cfg, db = _inbox(tmp_path)
    write_config(cfg, emu.base_url, [inbox], db)
    await _kill_right_after_the_start_is_acted_on(emu, cfg, db)

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 0, out
    state = emu.state.snapshot()
    assert [(j["starts"], j["start_requests"]) for j in state["jobs"]] == [(1, 1)]
    assert sidecar(inbox, "a")["phase"] == "done"
    assert invariants(inbox, state) == []


async def test_the_start_is_recorded_in_the_store_before_the_start_request_is_sent(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    # Kills the mutant that no longer awaits the commit of `start_sent` before the PATCH: the
    # row committed when the server received the PATCH must already say so.
    emu = await make_emulator()
    inbox, cfg, db = _inbox(tmp_path)
    write_config(cfg, emu.base_url, [inbox], db)

    row = await _kill_right_after_the_start_is_acted_on(emu, cfg, db)

    assert row["status"] == 200
    assert (row["phase"], row["start_sent"]) == ("starting", 1), row
    assert row["job_id"] == emu.state.snapshot()["jobs"][0]["id"]


async def test_each_ticket_sends_exactly_one_start_request(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    # Kills the mutant that sends every start twice (a 200 no-op on this server).
    emu = await make_emulator()
    inbox, cfg, db = _inbox(tmp_path, "a", "b", "c")
    write_config(cfg, emu.base_url, [inbox], db)

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 0, out
    state = emu.state.snapshot()
    assert sorted((j["starts"], j["start_requests"]) for j in state["jobs"]) == [(1, 1)] * 3
    assert invariants(inbox, state) == []


async def test_a_lost_create_answer_is_replayed_with_the_same_key_and_makes_one_job(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    # Kills the mutant whose Idempotency-Key changes on every attempt: the server creates a
    # job, the answer is lost, and a retry with a new key would leave that job staged.
    emu = await make_emulator(faults=(FaultSpec("create", "drop_after", count=1),))
    inbox, cfg, db = _inbox(tmp_path)
    write_config(cfg, emu.base_url, [inbox], db)

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 0, out
    state = emu.state.snapshot()
    assert state["create_requests"] == 2 and state["create_requests_without_key"] == 0
    assert list(state["create_requests_by_key"].values()) == [2], state["create_requests_by_key"]
    (job,) = state["jobs"]  # one job, the one the first request made
    assert (job["status"], job["starts"], job["start_requests"]) == ("completed", 1, 1)
    assert sidecar(inbox, "a")["job_id"] == job["id"]
    assert invariants(inbox, state) == []


async def test_a_create_whose_answer_was_lost_in_a_kill_is_replayed_with_the_same_key(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    # Kills the mutant whose Idempotency-Key changes between the attempts of the create step
    # (here: before and after a restart): a new key makes a second job and strands the first.
    emu = await make_emulator()
    inbox, cfg, db = _inbox(tmp_path)
    write_config(cfg, emu.base_url, [inbox], db)
    row = await _kill_right_after(emu, cfg, db, "create", "POST")
    assert (row["phase"], row["job_id"], row["status"]) == ("creating", None, 201)

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 0, out
    state = emu.state.snapshot()
    assert list(state["create_requests_by_key"].values()) == [2], state["create_requests_by_key"]
    (job,) = state["jobs"]
    assert (job["status"], job["starts"], job["start_requests"]) == ("completed", 1, 1)
    assert invariants(inbox, state) == []


async def test_a_409_to_a_start_on_a_job_already_started_is_read_back_and_the_ticket_goes_on(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    # The server answers a start on a started job with 409 (as some do). The first start is
    # refused (503, nothing done); while the agent reads the job back before trying again (it
    # is staged), another client starts it, so the agent's start gets the 409. `_start` must
    # read the job back, see it started and go on; the mutant that takes every 409 as final
    # fails the ticket.
    emu = await make_emulator(
        patch_started="conflict", faults=(FaultSpec("start", "error", param=503, count=1),)
    )
    inbox, cfg, db = _inbox(tmp_path)
    write_config(cfg, emu.base_url, [inbox], db)

    def start_elsewhere(route: str, method: str, path: str, status: int) -> None:
        if route != "get" or not any(r.route == "start" for r in emu.state.requests):
            return  # only the read-back after the refused start
        (job,) = emu.state.jobs.values()
        if not job.started and path.endswith(job.id):
            job.process = True
            emu.app[PROCESSOR_KEY].start(job)  # someone else's start, between GET and PATCH

    emu.state.after_handler = start_elsewhere
    code, out = await run_agent(cfg, "run", "--once", timeout=60)
    emu.state.after_handler = None

    assert code == 0, out
    state = emu.state.snapshot()
    starts = [r["status"] for r in state["requests"] if r["route"] == "start"]
    assert starts == [503, 409], starts  # the 409 path was taken
    (job,) = state["jobs"]
    assert (job["status"], job["starts"], job["start_requests"]) == ("completed", 1, 1)
    assert sidecar(inbox, "a")["phase"] == "done"
    assert invariants(inbox, state) == []
