"""Crash windows the torture campaign found (or can only rarely hit), rebuilt exactly.

Each test sets up the state a killed or interrupted agent leaves behind — a lost answer, a state
database row written just before the kill, a temp file from a write cut short — and checks that
the next run finishes the ticket exactly once, with nothing duplicated, torn or left behind.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from e2e_harness import (
    invariants,
    outputs_match,
    png_bytes,
    run_agent,
    spawn_agent,
    stop_agent,
    wait_for,
    write_config,
)

from agent import paths
from agent.emulator import FaultSpec, RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture
async def image_url() -> AsyncIterator[str]:
    """A loopback web server with one PNG, for URL inputs."""
    data = png_bytes()

    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=data, content_type="image/png")

    app = web.Application()
    app.router.add_get("/x.png", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/x.png"
    await runner.cleanup()


def _inbox(tmp_path: Path) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return inbox


async def test_a_lost_answer_to_adding_a_url_input_does_not_add_it_twice(
    tmp_path: Path, make_emulator: MakeEmulator, image_url: str
) -> None:
    # The server adds the input, then the connection drops before the answer: the retry must
    # read the job back instead of adding a second input (two inputs = two outputs, x (1).jpg).
    emu = await make_emulator(faults=(FaultSpec("input", "drop_after", count=1),))
    inbox = _inbox(tmp_path)
    (inbox / "u.job").write_text(f"input: {image_url}\ntarget: jpg\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "s.db")

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 0, out
    state = emu.state.snapshot()
    assert [len(j["inputs"]) for j in state["jobs"]] == [1]
    assert sorted(p.name for p in inbox.iterdir()) == ["u.job.done", "u.status.yaml", "x.jpg"]
    assert invariants(inbox, state) == []


async def test_a_restart_in_starting_with_an_unknown_status_neither_hangs_nor_starts_twice(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    # Killed after the upload, before the job started; on restart the job reads back with a
    # status code the agent does not know. It must ask again, not take the job as started (it
    # would poll a staged job forever) nor start it blindly.
    emu = await make_emulator(faults=(FaultSpec("start", "error", param=503),))
    inbox = _inbox(tmp_path)
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "a.job").write_text("input: a.png\ntarget: jpg\n")
    db = tmp_path / "s.db"
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], db)
    proc = spawn_agent(cfg)
    try:
        await wait_for(
            lambda: any(r["route"] == "start" for r in emu.state.snapshot()["requests"]),
            20,
            "a refused start",
        )
    finally:
        await stop_agent(proc, 9)
    emu.state.set_faults([FaultSpec("get", "unknown_status", count=1)], replace=True)

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 0, out
    state = emu.state.snapshot()
    assert [(j["starts"], j["start_requests"]) for j in state["jobs"]] == [(1, 1)]
    outputs_match(inbox, state, ["a.jpg"])
    assert invariants(inbox, state) == []


async def test_killed_between_linking_the_output_and_removing_the_part(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    # place() links the verified part to its final name, then unlinks the part. Killed between
    # the two, both names exist: the next run must see the output is placed (same file), not
    # place the part again as "a (1).jpg".
    emu = await make_emulator()
    inbox = _inbox(tmp_path)
    (inbox / "a.png").write_bytes(png_bytes())
    (inbox / "a.job").write_text("input: a.png\ntarget: jpg\n")
    db = tmp_path / "s.db"
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], db)
    code, out = await run_agent(cfg, "run", "--once", timeout=60)
    assert code == 0, out

    # Rebuild the moment of the kill from the finished run.
    conn = sqlite3.connect(db)
    with conn:
        (remote_id,) = conn.execute("SELECT remote_id FROM outputs").fetchone()
        conn.execute("UPDATE outputs SET state = 'placing', dest_name = NULL")
        conn.execute("UPDATE tickets SET phase = 'downloading', filed = 0, finished_at = NULL")
    conn.close()
    os.replace(inbox / "a.job.done", inbox / "a.job")
    part = inbox / paths.part_name("a.jpg", remote_id)
    os.link(inbox / "a.jpg", part)

    code, out = await run_agent(cfg, "run", "--once", timeout=60)

    assert code == 0, out
    names = sorted(p.name for p in inbox.iterdir())
    assert names == ["a.job.done", "a.jpg", "a.png", "a.status.yaml"], names
    outputs_match(inbox, emu.state.snapshot(), ["a.jpg"])
