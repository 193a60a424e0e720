"""Deleting a ticket while its job runs cancels the job; editing a ticket makes a new request."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import (
    emulator_outputs,
    md5,
    names,
    png_bytes,
    sidecar,
    spawn_agent,
    stop_agent,
    wait_for,
    wait_for_log,
    write_config,
)
from waits import WORK_ROUTES, any_of, files_stay, no_new_requests, same, stays_quiet

from agent.emulator import RunningEmulator
from agent.foldermark import MARK_NAME

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


async def _running_job(emu: RunningEmulator) -> str:
    await wait_for(
        lambda: any(j.status in ("queued", "processing") for j in emu.state.jobs.values()),
        10,
        "a job to run",
    )
    (job_id,) = [i for i, j in emu.state.jobs.items() if j.status in ("queued", "processing")]
    return job_id


def _start_agent(
    tmp_path: Path, emu: RunningEmulator
) -> tuple[Path, Path, subprocess.Popen[bytes]]:
    """An inbox with photo.png and a running agent watching it: (inbox, log, process)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "photo.png").write_bytes(png_bytes())
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
    log = tmp_path / "agent.log"
    return inbox, log, spawn_agent(cfg, "run", log=log)


async def _photo_job_running(inbox: Path, log: Path, emu: RunningEmulator) -> str:
    """Drop photo.job (png → jpg) and wait until its job runs and its sidecar exists."""
    await wait_for_log(log, "watching")
    (inbox / "photo.job").write_text("input: photo.png\ntarget: jpg\n")
    job_id = await _running_job(emu)
    await wait_for(lambda: (inbox / "photo.status.yaml").exists(), 5, "the sidecar")
    return job_id


async def test_deleting_a_ticket_while_its_job_runs_cancels_the_job_and_leaves_nothing(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=8)
    inbox, log, proc = _start_agent(tmp_path, emu)
    try:
        job_id = await _photo_job_running(inbox, log, emu)
        (inbox / "photo.job").unlink()
        await wait_for(lambda: emu.state.jobs[job_id].status == "canceled", 10, "job canceled")
        # While it runs, the agent's folder mark is there too (agent.foldermark).
        await wait_for(lambda: names(inbox) - {MARK_NAME} == {"photo.png"}, 5, "the sidecar to go")
        # and nothing comes back: no file (a late sidecar write), no job, no download, no exit;
        # the window spans the slowest poll (0.5 s) and the deletion grace (0.5 s) twice over
        sent = len(emu.state.requests)
        await stays_quiet(
            1.0,
            any_of(
                files_stay(inbox, {"photo.png"}, ignore={MARK_NAME}),
                no_new_requests(emu, since=sent, routes=WORK_ROUTES),
                same("the agent's exit code", proc.poll, None),
            ),
            "after the cancel nothing comes back",
        )
    finally:
        await stop_agent(proc)
    assert names(inbox) == {"photo.png"}
    assert len(emu.state.jobs) == 1 and emu.state.jobs[job_id].status == "canceled"
    assert emu.state.snapshot()["downloads"] == []


async def test_editing_a_ticket_while_its_job_runs_makes_a_new_request(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=3)
    inbox, log, proc = _start_agent(tmp_path, emu)
    try:
        await wait_for_log(log, "watching")
        (inbox / "photo.job").write_text("input: photo.png\ntarget: jpg\n")
        first = await _running_job(emu)
        (inbox / "photo.job").write_text("input: photo.png\ntarget: webp\n")
        await wait_for(lambda: (inbox / "photo.job.done").exists(), 20, "photo.job.done")
    finally:
        await stop_agent(proc)

    state = emu.state.snapshot()
    assert len(state["jobs"]) == 2, state["jobs"]
    old = next(j for j in state["jobs"] if j["id"] == first)
    new = next(j for j in state["jobs"] if j["id"] != first)
    assert old["status"] == "canceled" and old["targets"] == ["jpg"]
    assert (
        new["status"] == "completed"
        and new["targets"] == ["webp"]
        and new["starts"] == new["start_requests"] == 1
    )
    assert sidecar(inbox, "photo")["job_id"] == new["id"]
    assert md5(inbox / "photo.webp") == emulator_outputs(state)["photo.webp"]
    assert names(inbox) == {"photo.png", "photo.webp", "photo.job.done", "photo.status.yaml"}


async def test_renaming_a_ticket_while_its_job_runs_follows_it_without_a_second_job(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=4)
    inbox, log, proc = _start_agent(tmp_path, emu)
    try:
        job_id = await _photo_job_running(inbox, log, emu)
        (inbox / "photo.job").rename(inbox / "holiday.job")
        renamed_at = time.monotonic()
        await wait_for_log(log, "renamed from photo.job")
        await wait_for(lambda: (inbox / "holiday.job.done").exists(), 20, "holiday.job.done")
        # nothing is canceled: no DELETE, the job stays completed, until well past the deletion
        # grace (0.5 s) counted from the rename
        sent = len(emu.state.requests)
        await stays_quiet(
            0.3,
            any_of(
                no_new_requests(emu, since=sent, routes={"delete", *WORK_ROUTES}),
                same("the job's status", lambda: emu.state.jobs[job_id].status, "completed"),
            ),
            "a renamed ticket's job is not canceled",
            until=renamed_at + 1.0,
        )
    finally:
        await stop_agent(proc)
    assert len(emu.state.jobs) == 1 and emu.state.jobs[job_id].status == "completed"
    produced = emulator_outputs(emu.state.snapshot())
    assert names(inbox) == {"photo.png", "holiday.job.done", "holiday.status.yaml", *produced}
    for filename, checksum in produced.items():
        assert md5(inbox / filename) == checksum
    side = sidecar(inbox, "holiday")
    assert side["phase"] == "done" and side["job_id"] == job_id, side
    assert "renamed from photo.job" in log.read_text()
