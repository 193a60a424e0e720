"""Job-list polling against the emulator: with many jobs in flight the agent reads their status
from GET /jobs pages instead of one GET /jobs/{id} each, and falls back to per-job polls when the
list fails or is switched off."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from e2e_harness import invariants, png_bytes, spawn_agent, stop_agent, wait_for, write_config

from agent.emulator import FaultSpec, RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]

JOBS = 24
PROCESSING = 8.0
POLLING = {"min_interval": 0.5, "max_interval": 2.0, "reconcile_interval": 2}


async def run_batch(
    tmp_path: Path, emu: RunningEmulator, **sections: Any
) -> tuple[Counter[str], int, dict[str, Any]]:
    """Drop JOBS tickets and wait until all are done.

    Returns the GET /jobs/{id} count per job, the number of list requests, the emulator state."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(JOBS):
        (inbox / f"p{i:02}.png").write_bytes(png_bytes((8 + i, 8)))
    cfg = write_config(
        tmp_path / "c.yaml",
        emu.base_url,
        [inbox],
        tmp_path / "state.db",
        polling={**POLLING, **sections.pop("polling", {})},
        **sections,
    )
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, "run", log=log)
    try:
        for i in range(JOBS):
            (inbox / f"p{i:02}.job").write_text(f"input: p{i:02}.png\ntarget: jpg\n")
        await wait_for(
            lambda: all((inbox / f"p{i:02}.job.done").exists() for i in range(JOBS)),
            60,
            "every ticket to end .job.done",
        )
    finally:
        code = await stop_agent(proc)
    assert code == 0, log.read_text()[-3000:]
    state = emu.state.snapshot()
    assert invariants(inbox, state) == []
    assert all(j["starts"] == j["start_requests"] == 1 for j in state["jobs"])
    gets: Counter[str] = Counter()
    lists = 0
    for r in emu.state.requests:
        parts = r.path.split("/")
        if r.method == "GET" and r.path == "/v2/jobs":
            lists += 1
        elif r.method == "GET" and len(parts) == 4 and parts[2] == "jobs":
            gets[parts[3]] += 1
    return gets, lists, state


async def test_many_jobs_in_flight_are_polled_through_the_job_list(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=PROCESSING)
    gets, lists, _ = await run_batch(tmp_path, emu)
    assert lists >= 2  # at least one sweep while the jobs ran
    # Per-job polling (0.5 s ×1.5 up to 2 s) sends 6–7 GETs per 8 s job (the two tests below).
    # Here each job is polled on its own while that is more often than the sweeps (every 1 s):
    # at 0, 0.5 and 1.25 s; then the list tells the agent when it finished.
    assert len(gets) == JOBS
    assert sum(gets.values()) <= 4 * JOBS, gets
    assert sum(gets.values()) + lists < 5 * JOBS


async def test_per_job_polling_takes_over_when_the_job_list_fails(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(
        processing_seconds=PROCESSING, faults=(FaultSpec("list", "error", param=503),)
    )
    gets, lists, _ = await run_batch(tmp_path, emu)
    assert lists >= 1
    assert sum(gets.values()) >= 6 * JOBS  # every job was polled on its own schedule


async def test_the_job_list_is_not_used_when_switched_off(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=PROCESSING)
    gets, lists, _ = await run_batch(tmp_path, emu, polling={"sweep": False})
    assert lists == 0
    assert sum(gets.values()) >= 6 * JOBS
