"""`status`, `list` and `why` work read-only while `run` is active."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from e2e_harness import (
    KEY,
    invariants,
    png_bytes,
    spawn_agent,
    stop_agent,
    wait_for,
    wait_for_log,
    write_config,
)

from agent.emulator import RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


async def _cli(config: Path, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("API2CONVERT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def test_status_list_and_why_work_read_only_while_run_is_active(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(processing_seconds=6)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for stem in ("photo", "other"):
        (inbox / f"{stem}.png").write_bytes(png_bytes())
        (inbox / f"{stem}.job").write_text(f"input: {stem}.png\ntarget: jpg\n")
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], tmp_path / "state.db")
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, "run", log=log)
    try:
        await wait_for_log(log, "photo.job [job")
        await wait_for(
            lambda: (
                all(j.status in ("queued", "processing") for j in emu.state.jobs.values())
                and len(emu.state.jobs) == 2
            ),
            10,
            "both jobs running",
        )
        code, out = await _cli(cfg, "status", "--json")
        assert code == 0, out
        status = json.loads(out)
        assert status["running"] is True and status["pid"] == proc.pid, status
        assert sum(status["tickets"].values()) == 2
        code, out = await _cli(cfg, "status")
        assert code == 0 and f"running (pid {proc.pid})" in out, out

        code, out = await _cli(cfg, "list", "--json")
        assert code == 0, out
        rows = json.loads(out)
        assert sorted(r["name"] for r in rows) == ["other.job", "photo.job"]
        assert all(r["phase"] == "processing" and r["job_id"] for r in rows), rows
        code, out = await _cli(cfg, "list")
        assert code == 0 and "photo.job" in out and "processing" in out, out

        code, out = await _cli(cfg, "why", "photo", "--json")
        assert code == 0, out
        (why,) = json.loads(out)
        events = [h["event"] for h in why["history"]]
        assert events[0] == "accepted" or "created" in events, events
        assert {"created", "uploaded", "started"} <= set(events), events
        assert why["phase"] == "processing" and why["job_id"] in emu.state.jobs
        code, out = await _cli(cfg, "why", "photo")
        assert code == 0 and "history:" in out and "processing" in out, out
        assert KEY not in out

        code, out = await _cli(cfg, "why", "nosuchticket")
        assert code != 0 and "no ticket" in out

        # the agent goes on undisturbed
        assert proc.poll() is None
        await wait_for(
            lambda: (inbox / "photo.job.done").exists() and (inbox / "other.job.done").exists(),
            20,
            "both tickets done",
        )
    finally:
        code = await stop_agent(proc)
    assert code == 0, log.read_text()[-3000:]
    assert invariants(inbox, emu.state.snapshot()) == []
