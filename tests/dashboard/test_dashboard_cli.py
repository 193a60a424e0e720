"""The operator CLI reaches a running agent *process* through ``dashboard.json`` and the local API;
the file is private while the agent runs and gone after it stops."""

from __future__ import annotations

import json
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from dash_helpers import drop_ticket, wait_for
from e2e_harness import run_agent, spawn_agent, stop_agent, write_config

from agent.emulator import FaultSpec, RunningEmulator

MakeEmulator = Callable[..., Awaitable[RunningEmulator]]


async def test_cli_pause_resume_and_retry_go_through_the_local_api(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emu = await make_emulator(faults=(FaultSpec("job", "fail", count=1),))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    state = tmp_path / "state" / "state.db"
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], state)
    runtime = state.with_name(state.name + ".dashboard.json")
    proc = spawn_agent(cfg, log=tmp_path / "agent.log")
    try:
        await wait_for(runtime.exists, 20, "dashboard.json")
        assert stat.S_IMODE(runtime.stat().st_mode) == 0o600
        info = json.loads(runtime.read_text())
        assert info["pid"] == proc.pid and info["url"].startswith("http://127.0.0.1:")
        auth = {"Authorization": f"Bearer {info['token']}"}

        async def status() -> dict[str, object]:
            async with (
                aiohttp.ClientSession() as s,
                s.get(info["url"] + "api/status", headers=auth) as r,
            ):
                assert r.status == 200
                data: dict[str, object] = await r.json()
                return data

        code, out = await run_agent(cfg, "pause", "--json")
        assert code == 0, out
        assert json.loads(out) == {"paused": True, "running": True}
        assert (await status())["paused"] is True
        code, out = await run_agent(cfg, "resume")
        assert code == 0 and "resumed" in out
        assert (await status())["paused"] is False

        ticket = drop_ticket(inbox, "broken")
        await wait_for(ticket.with_name("broken.job.failed").exists, 20, "the failure")
        code, out = await run_agent(cfg, "retry", "broken", "--json")
        assert code == 0, out
        assert json.loads(out) == {"retried": [str(ticket)]}
        await wait_for(ticket.with_name("broken.job.done").exists, 20, "the rerun")
        code, out = await run_agent(cfg, "rescan")
        assert code == 0 and "rescan requested" in out
        code, out = await run_agent(cfg, "dashboard", "--json")
        assert code == 0 and json.loads(out) == {"url": f"{info['url']}?token={info['token']}"}
    finally:
        assert await stop_agent(proc) == 0
    assert not runtime.exists()


async def test_cli_stop_stops_the_agent_cleanly_through_the_local_api(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """`convert-agent stop`: what stops an agent that has no console and no tray (Windows, started
    at login, where no signal reaches it) — the same graceful stop as Quit and SIGTERM: exit 0,
    the runtime file removed, the state lock released, and a ticket under way goes on at the
    next start."""
    emu = await make_emulator(processing_seconds=30)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    state = tmp_path / "state" / "state.db"
    cfg = write_config(tmp_path / "c.yaml", emu.base_url, [inbox], state)
    runtime = state.with_name(state.name + ".dashboard.json")
    log = tmp_path / "agent.log"
    proc = spawn_agent(cfg, log=log)
    try:
        await wait_for(runtime.exists, 20, "dashboard.json")
        ticket = drop_ticket(inbox, "slow")
        await wait_for(lambda: "slow.job [job" in log.read_text(), 20, "the job to be made")
        code, out = await run_agent(cfg, "stop", "--json")
        assert code == 0, out
        assert json.loads(out) == {"stopped": True, "running": False}
        await wait_for(lambda: proc.poll() is not None, 10, "the agent's process to end")
        assert proc.returncode == 0, log.read_text()[-2000:]
        assert "stopping" in log.read_text()
        assert not runtime.exists()
        code, out = await run_agent(cfg, "stop")
        assert code == 0 and "not running" in out
    finally:
        if proc.poll() is None:
            await stop_agent(proc)
    assert ticket.exists() and not ticket.with_name("slow.job.failed").exists()
    assert emu.state.create_requests == 1
